"""`TextLoss`: an LLM-written evaluation of a variable, which is then that variable's feedback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import prompts
from .autograd.function import Module
from .config import resolve_engine
from .serving import budget
from .variable import PendingGradients, Variable

if TYPE_CHECKING:
    from .config import EngineSpec
    from .engine.base import EngineLM


class TextLoss(Module):
    """The engine's evaluation of a variable under eval_system_prompt. Without an engine, the backward one."""

    def __init__(self, eval_system_prompt: Variable | str, engine: EngineSpec | None = None,
                 max_tokens: int = 256) -> None:
        if isinstance(eval_system_prompt, Variable):
            eval_system_prompt = eval_system_prompt.value
        self.eval_system_prompt = eval_system_prompt
        self.engine = resolve_engine(engine)
        self.max_tokens = max_tokens

    def parameters(self) -> list[Variable]:
        return []  # the instruction is a constant

    def forward(self, instance: Variable) -> Variable:
        evaluation = budget.generate(self.engine, instance.value, system_prompt=self.eval_system_prompt,
                                     max_tokens=self.max_tokens)
        loss = Variable(evaluation, prompts.TEXT_LOSS_ROLE, requires_grad=True, predecessors=[instance])

        def backward(engine: EngineLM) -> PendingGradients:
            if not instance.requires_grad:
                return []
            return [(instance, Variable(loss.value, f"feedback to the {instance.role_description}",
                                        requires_grad=False))]

        loss.backward_fn = backward
        return loss
