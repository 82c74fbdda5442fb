"""`BlackboxLLM`: a model whose system prompt is a Variable, the thing we train."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .autograd.function import Module
from .autograd.llm_ops import LLMCall
from .variable import Variable

if TYPE_CHECKING:
    from .config import EngineSpec

SYSTEM_PROMPT_ROLE = "system prompt to the language model"


class BlackboxLLM(Module):
    """An LLMCall under a system prompt (a str is a constant Variable). Without an engine, the backward one."""

    def __init__(self, engine: EngineSpec | None = None, system_prompt: Variable | str | None = None,
                 max_tokens: int = 512, feedback_max_tokens: int = 256) -> None:
        if isinstance(system_prompt, str):
            system_prompt = Variable(system_prompt, SYSTEM_PROMPT_ROLE, requires_grad=False)
        self.system_prompt = system_prompt
        self.llm_call = LLMCall(engine, system_prompt, max_tokens=max_tokens, feedback_max_tokens=feedback_max_tokens)
        self.engine = self.llm_call.engine

    @property
    def feedback_skipped(self) -> int:
        """Feedback calls given up because they could not fit the context window."""
        return self.llm_call.feedback_skipped

    def parameters(self) -> list[Variable]:
        """What an optimizer may train: the system prompt, when it requires a gradient."""
        return [self.system_prompt] if self.system_prompt is not None and self.system_prompt.requires_grad else []

    def forward(self, x: Variable) -> Variable:
        return self.llm_call(x)
