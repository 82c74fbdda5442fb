"""Textual gradient descent: one evaluation-engine call turns a variable's feedback into a new value."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import budget, prompts
from .errors import ContextOverflowError
from .parallel import run_concurrently
from .variable import Variable

if TYPE_CHECKING:
    from .config import EngineSpec

_IMPROVED = re.compile(r"<IMPROVED_VARIABLE>(.*?)</IMPROVED_VARIABLE>", re.DOTALL | re.IGNORECASE)


def extract_improved_value(reply: str | None) -> str | None:
    """The text between the tags, or None when the reply lacks them or they hold nothing."""
    match = _IMPROVED.search(reply or "")
    if match is None:
        return None
    value = match.group(1).strip()
    return value or None


class TGD:
    """Textual gradient descent over a list of variables.

    Small models often ignore the tag format. That is expected, not exceptional: the variable keeps
    its value, `format_failures` counts it and `updated` tells the caller which variables changed.

    Within the context window, the text under edit is never cut (the reply must give it back whole,
    so the reply keeps room for it plus a quarter); the feedback items share the rest, each cut in the
    middle as needed, and when they still do not fit the earliest items are dropped. A variable whose
    request cannot fit at all keeps its value and is marked in `overflowed`.
    """

    def __init__(self, parameters: list[Variable], engine: EngineSpec | None = None,
                 constraints: list[str] | None = None, max_tokens: int = 512) -> None:
        from .config import resolve_engine

        self.parameters = list(parameters)
        self.engine = resolve_engine(engine)  # a name, an engine, or None for the backward engine
        self.constraints = list(constraints or [])
        self.max_tokens = max_tokens
        self.format_failures = 0
        self.updated: list[bool] = [False] * len(self.parameters)
        self.last_replies: list[str] = [""] * len(self.parameters)
        self.overflowed: list[bool] = [False] * len(self.parameters)

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.reset_gradients()

    def _fields(self, variable: Variable) -> dict[str, str | budget.Cuttable]:
        constraints = ""
        if self.constraints:
            constraints = prompts.CONSTRAINTS_HEADER + "\n".join(f"- {c}" for c in self.constraints) + "\n"
        feedback: str | budget.Cuttable = "(no feedback)"
        if variable.gradients:
            feedback = budget.Cuttable(items=tuple(g.value for g in variable.gradients), drop_oldest=True,
                                       noun="feedback items")
        return {"role": variable.role_description, "value": variable.value, "feedback": feedback,
                "constraints": constraints}

    def build_request(self, variable: Variable) -> str:
        """The request as written, before any fitting to the context window."""
        return prompts.OPTIMIZER_TEMPLATE.format(**budget.as_written(self._fields(variable)))

    def _ask(self, variable: Variable) -> str | None:
        """The optimizer's reply, or None when the request cannot fit the context window."""
        try:
            return budget.fitted_chat(self.engine, system=prompts.OPTIMIZER_SYSTEM, user=prompts.OPTIMIZER_TEMPLATE,
                                      fields=self._fields(variable), max_tokens=self.max_tokens,
                                      min_output=budget.room_to_return(self.engine, [variable.value]))
        except ContextOverflowError:
            return None

    def step(self) -> None:
        replies = run_concurrently([lambda p=p: self._ask(p) for p in self.parameters])
        for i, (variable, reply) in enumerate(zip(self.parameters, replies, strict=True)):
            self.overflowed[i] = reply is None
            self.last_replies[i] = reply or ""
            if reply is None:
                self.updated[i] = False
                continue
            new_value = extract_improved_value(reply)
            self.updated[i] = new_value is not None
            if new_value is None:
                self.format_failures += 1
                continue
            variable.set_value(new_value)


TextualGradientDescent = TGD
