"""Textual gradient descent with momentum: the optimizer LLM also sees the variable's recent past.

TextGrad's TextualGradientDescentwithMomentum shows the optimizer the variable's earlier values; ours
keeps, per parameter, the last `momentum_window` values the optimizer was asked to improve together with
the feedback each got, and puts them (oldest first) in front of the usual TGD request, with a sentence
on what a trend means: feedback that recurs names what is still wrong, a point no longer raised was
fixed and its fix should stay. With no past yet (the first step) the request is exactly TGD's.

The past lives in a `MomentumHistory`, apart from the optimizer, so that a caller who makes a new
optimizer every step (as FedTextGrad's client does, one per local step) can still hand it the past.
Under the context window the past is never cut: its oldest steps are left out, whole, before any feedback.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import prompts
from ..serving import budget
from ..variable import Variable
from .optimizer import TGD

if TYPE_CHECKING:
    from ..config import EngineSpec

DEFAULT_WINDOW = 3


@dataclass(frozen=True)
class PastStep:
    """A value the optimizer was asked to improve, and the feedback it had then."""

    value: str
    feedback: tuple[str, ...]


class MomentumHistory:
    """The last `window` steps of each parameter (by its position in the optimizer's list)."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 0:
            raise ValueError("momentum_window must be 0 or more")
        self.window = window
        self._steps: dict[int, deque[PastStep]] = {}

    def of(self, index: int) -> list[PastStep]:
        """Parameter index's past steps, oldest first."""
        return list(self._steps.get(index, ()))

    def record(self, index: int, step: PastStep) -> None:
        if self.window:
            self._steps.setdefault(index, deque(maxlen=self.window)).append(step)


def _describe(step: PastStep, number: int, age: int) -> str:
    feedback = "\n".join(step.feedback) if step.feedback else "(no feedback)"
    steps = "1 step" if age == 1 else f"{age} steps"
    return prompts.MOMENTUM_STEP.format(number=number, age=steps, value=step.value, feedback=feedback)


class TGDMomentum(TGD):
    """TGD whose requests carry the last momentum_window values of the variable and their feedback.

    Each step() first asks, then records every parameter's value before the step and its feedback, so
    the next step (of this optimizer, or of another given the same `history`) sees them. A window of 0
    keeps no past: the requests are TGD's.
    """

    def __init__(self, parameters: list[Variable], engine: EngineSpec | None = None,
                 momentum_window: int = DEFAULT_WINDOW, constraints: list[str] | None = None,
                 max_tokens: int = 512, history: MomentumHistory | None = None) -> None:
        super().__init__(parameters, engine=engine, constraints=constraints, max_tokens=max_tokens)
        self.history = history if history is not None else MomentumHistory(momentum_window)
        if history is not None and momentum_window != history.window:
            raise ValueError(f"momentum_window {momentum_window} differs from the history's {history.window}")
        self.momentum_window = momentum_window

    def _request(self, index: int, variable: Variable) -> tuple[str, dict[str, str | budget.Droppable]]:
        past = self.history.of(index)
        template, fields = super()._request(index, variable)
        if not past:
            return template, fields
        steps = tuple(_describe(step, number, len(past) - number + 1) for number, step in enumerate(past, 1))
        history = budget.Droppable(items=steps, keep=0, noun="earlier versions", priority=0)
        return prompts.MOMENTUM_TEMPLATE, {**fields, "history": history}

    def step(self) -> None:
        before = [PastStep(p.value, tuple(g.value for g in p.gradients)) for p in self.parameters]
        super().step()
        for index, step in enumerate(before):
            self.history.record(index, step)


TextualGradientDescentwithMomentum = TGDMomentum  # TextGrad's name
