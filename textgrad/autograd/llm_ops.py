"""LLM calls in the graph: `LLMCall` (an input, optionally under a system prompt) and `FormattedLLMCall`
(several inputs put into a format string). Their backward asks the backward engine, once per input that
requires a gradient, how that input should change given the feedback the response received."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import prompts
from ..config import resolve_engine
from ..errors import ContextOverflowError
from ..serving import budget
from ..serving.stats import call_kind
from ..variable import PendingGradients, Variable
from .function import Function

if TYPE_CHECKING:
    from ..config import EngineSpec
    from ..engine.base import EngineLM

RESPONSE_ROLE = "response from the language model"


class LLMCall(Function):
    """The engine's answer to an input under an optional system prompt; without an engine, the backward one.

    The answer asks for at most max_tokens, each feedback request for feedback_max_tokens. No text is cut to
    fit the context window: a feedback request that cannot fit is skipped and counted in `feedback_skipped`.
    """

    def __init__(self, engine: EngineSpec | None = None, system_prompt: Variable | None = None, *,
                 max_tokens: int = 512, feedback_max_tokens: int = 256) -> None:
        self.engine = resolve_engine(engine)
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self.feedback_max_tokens = feedback_max_tokens
        self.feedback_skipped = 0

    def forward(self, input_variable: Variable, response_role_description: str = RESPONSE_ROLE) -> Variable:
        return self._answer(input_variable.value, [input_variable], response_role_description)

    def _answer(self, prompt: str, inputs: list[Variable], role: str) -> Variable:
        system = self.system_prompt.value if self.system_prompt is not None else None
        with call_kind("answer"):
            answer = budget.generate(self.engine, prompt, system_prompt=system, max_tokens=self.max_tokens)
        parents = inputs if self.system_prompt is None else [self.system_prompt, *inputs]
        response = Variable(answer, role, requires_grad=True, predecessors=parents)
        response.backward_fn = lambda engine: self._feedback(engine, parents, prompt, response)
        return response

    def _feedback(self, engine: EngineLM, parents: list[Variable], prompt: str,
                  response: Variable) -> PendingGradients:
        judgement = response.get_gradient_text()
        if not judgement:
            return []
        pending: PendingGradients = []
        for parent in parents:
            if not parent.requires_grad:
                continue
            fields = {"role": parent.role_description, "variable": parent.value, "input": prompt,
                      "output": response.value, "judgement": judgement}
            try:
                with call_kind("feedback"):
                    feedback = budget.fitted_chat(engine, system=prompts.FEEDBACK_SYSTEM,
                                                  user=prompts.FEEDBACK_TEMPLATE, fields=fields,
                                                  max_tokens=self.feedback_max_tokens)
            except ContextOverflowError:
                self.feedback_skipped += 1  # the engine counted it too; the other inputs' feedback remains
                continue
            pending.append((parent, Variable(feedback, f"feedback to the {parent.role_description}",
                                             requires_grad=False)))
        return pending


class FormattedLLMCall(LLMCall):
    """An LLM call whose prompt is format_string filled with the values of several input variables.

    `fields` names the format string's fields (TextGrad passes a dict of them; its values are unused);
    the call takes a dict of exactly those variables.
    """

    def __init__(self, engine: EngineSpec | None, format_string: str, fields: Mapping[str, object],
                 system_prompt: Variable | None = None, **options: int) -> None:
        super().__init__(engine, system_prompt, **options)
        self.format_string = format_string
        self.fields = dict(fields)

    def forward(self, inputs: Mapping[str, Variable],  # type: ignore[override]
                response_role_description: str = RESPONSE_ROLE) -> Variable:
        if set(inputs) != set(self.fields):
            raise ValueError(f"the call takes the fields {sorted(self.fields)}, not {sorted(inputs)}")
        prompt = self.format_string.format(**{name: variable.value for name, variable in inputs.items()})
        return self._answer(prompt, list(inputs.values()), response_role_description)
