"""Textual gradient descent: one evaluation-engine call turns a variable's feedback into a new value."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import prompts
from .parallel import run_concurrently
from .variable import Variable

if TYPE_CHECKING:
    from .engine import ChatEngine

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
    """

    def __init__(self, parameters: list[Variable], engine: ChatEngine | None = None,
                 constraints: list[str] | None = None, max_tokens: int = 512) -> None:
        from .config import get_backward_engine

        self.parameters = list(parameters)
        self.engine = engine or get_backward_engine()
        self.constraints = list(constraints or [])
        self.max_tokens = max_tokens
        self.format_failures = 0
        self.updated: list[bool] = [False] * len(self.parameters)
        self.last_replies: list[str] = [""] * len(self.parameters)

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.reset_gradients()

    def build_request(self, variable: Variable) -> str:
        constraints = ""
        if self.constraints:
            constraints = prompts.CONSTRAINTS_HEADER + "\n".join(f"- {c}" for c in self.constraints) + "\n"
        return prompts.OPTIMIZER_TEMPLATE.format(
            role=variable.role_description, value=variable.value,
            feedback=variable.get_gradient_text() or "(no feedback)", constraints=constraints,
        )

    def step(self) -> None:
        replies = run_concurrently([
            lambda p=p: self.engine.generate(self.build_request(p), system_prompt=prompts.OPTIMIZER_SYSTEM,
                                             max_tokens=self.max_tokens)
            for p in self.parameters
        ])
        for i, (variable, reply) in enumerate(zip(self.parameters, replies, strict=True)):
            self.last_replies[i] = reply
            new_value = extract_improved_value(reply)
            self.updated[i] = new_value is not None
            if new_value is None:
                self.format_failures += 1
                continue
            variable.set_value(new_value)


TextualGradientDescent = TGD
