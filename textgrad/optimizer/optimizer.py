"""Textual gradient descent: one evaluation-engine call turns a variable's feedback into a new value.
(The variant that also shows the variable's recent past is textgrad.optimizer.momentum.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import prompts, structured
from ..config import resolve_engine
from ..errors import ContextOverflowError
from ..parallel import run_concurrently
from ..serving import budget
from ..serving.stats import call_kind
from ..serving.transport import ChatReply
from ..variable import Variable

if TYPE_CHECKING:
    from ..config import EngineSpec

# The JSON field's name steers a small model as much as the request does: measured on SmolLM2-135M,
# "improved_variable" drew placeholders ("The edited text is now: {0}"), "instructions" drew instructions.
IMPROVED_REPLY = structured.ReplySpec(field="improved_text", tag="IMPROVED_VARIABLE",
                                      what="the text rewritten to follow the feedback")
INSTRUCTIONS_REPLY = structured.ReplySpec(field="instructions", tag="IMPROVED_VARIABLE",
                                          what="the instructions rewritten to follow the feedback")


def extract_improved_value(reply: str | None) -> str | None:
    """The text between the tags, or None when the reply lacks them or they hold nothing."""
    return structured.extract(ChatReply(reply or ""), IMPROVED_REPLY, structured=False).value


class TGD:
    """Textual gradient descent over a list of variables.

    The new value comes back as a one-field JSON object where the engine's backend has structured
    output, else between tags (textgrad.structured). Small models still fail at times; that is expected,
    not exceptional: the variable keeps its value, `format_failures` counts it, `failures` says why
    (no_tags, unparseable_json, empty, truncated, context_overflow) and `updated` which variables changed.

    Within the context window no text is cut: the text under edit is sent whole (and the reply keeps room
    to give it back whole, plus a quarter); when the feedback items do not all fit, the earliest are left
    out, whole, down to one (counted by the engine as context_dropped). A variable whose request cannot fit
    even so keeps its value and is marked in `overflowed`.

    `reply` names the text in the request and the JSON field that carries it back; set it to
    INSTRUCTIONS_REPLY when the variables are prompts.
    """

    reply: structured.ReplySpec = IMPROVED_REPLY

    def __init__(self, parameters: list[Variable], engine: EngineSpec | None = None,
                 constraints: list[str] | None = None, max_tokens: int = 512) -> None:
        self.parameters = list(parameters)
        self.engine = resolve_engine(engine)  # a name, an engine, or None for the backward engine
        self.constraints = list(constraints or [])
        self.max_tokens = max_tokens
        self.format_failures = 0
        self.updated: list[bool] = [False] * len(self.parameters)
        self.last_replies: list[str] = [""] * len(self.parameters)
        self.overflowed: list[bool] = [False] * len(self.parameters)
        self.failures: list[str | None] = [None] * len(self.parameters)
        # What each variable's last request said besides the text under edit (request_texts).
        self.request_texts: list[tuple[str, ...]] = [()] * len(self.parameters)

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.reset_gradients()

    def _request(self, index: int, variable: Variable) -> tuple[str, dict[str, str | budget.Droppable]]:
        """The user template of the request that updates parameter `index`, and its fields."""
        return prompts.OPTIMIZER_TEMPLATE, self._fields(variable)

    def _fields(self, variable: Variable) -> dict[str, str | budget.Droppable]:
        constraints = ""
        if self.constraints:
            constraints = prompts.CONSTRAINTS_HEADER + "\n".join(f"- {c}" for c in self.constraints) + "\n"
        feedback: str | budget.Droppable = "(no feedback)"
        if variable.gradients:
            feedback = budget.Droppable(items=tuple(g.value for g in variable.gradients), noun="feedback items")
        return {"role": variable.role_description, "value": variable.value, "feedback": feedback,
                "constraints": constraints}

    def _reply_format(self) -> str:
        return self.reply.instruction(structured.request_format(self.engine, self.reply) is not None)

    def build_request(self, variable: Variable) -> str:
        """The request as written, before any fitting to the context window."""
        template, fields = self._request(self.parameters.index(variable), variable)
        return template.format(**budget.as_written(fields), reply_format=self._reply_format())

    def _request_texts(self, template: str, fields: dict[str, str | budget.Droppable]) -> tuple[str, ...]:
        """The request's own texts, apart: the system prompt, the template filled in without the text under
        edit, its earlier versions (momentum) or the feedback, and each feedback item. A reply made of them,
        rather than of the text it edits, is junk (utils.federated.degenerate)."""
        feedback = fields["feedback"]
        items = feedback.items if isinstance(feedback, budget.Droppable) else (feedback,)
        written = {**budget.as_written(fields), "value": "", "feedback": "", "history": ""}
        return (prompts.OPTIMIZER_SYSTEM, template.format(**written, reply_format=self._reply_format()), *items)

    def _ask(self, index: int, variable: Variable) -> structured.TextAnswer | None:
        """The optimizer's answer, or None when the request cannot fit the context window."""
        template, fields = self._request(index, variable)
        self.request_texts[index] = self._request_texts(template, fields)
        try:
            # The reply may be as long as the text it gives back needs, whatever max_tokens says.
            with call_kind("optimizer"):
                return structured.ask_text(self.engine, self.reply, system=prompts.OPTIMIZER_SYSTEM, user=template,
                                           fields=fields, max_tokens=self.max_tokens,
                                           min_output=budget.room_to_return(self.engine, [variable.value]))
        except ContextOverflowError:
            return None

    def step(self) -> None:
        answers = run_concurrently([lambda i=i, p=p: self._ask(i, p) for i, p in enumerate(self.parameters)])
        for i, (variable, answer) in enumerate(zip(self.parameters, answers, strict=True)):
            self.overflowed[i] = answer is None
            self.last_replies[i] = answer.text if answer is not None else ""
            self.failures[i] = structured.CONTEXT_OVERFLOW if answer is None else answer.failure
            self.updated[i] = answer is not None and answer.value is not None
            if answer is None:
                continue
            if answer.value is None:
                self.format_failures += 1
                continue
            variable.set_value(answer.value)


TextualGradientDescent = TGD
