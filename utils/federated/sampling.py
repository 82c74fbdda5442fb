"""How each role of a run samples: --temperature and --top_p, given for every role or per role.

The roles are the kinds of LLM call a run makes: `answer` (the test engine answering, and the evaluation
engine's own zero-shot test), `feedback`, `optimizer` and `merge` (the evaluation engine writing) and `judge`
(--judge llm). Each flag takes one or more entries: `VALUE` sets every role, `ROLE=VALUE` one role, later
entries win (`--top_p 0.99 optimizer=1`). Our defaults are temperature 0 and no top_p (the server's own,
1.0); the paper configs set the reference code's top_p 0.99 for every role.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the flags are parsed without loading an LLM client
    from textgrad.engine import ChatEngine

ROLES = ("answer", "feedback", "optimizer", "merge", "judge")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float | None = None  # None: not sent, so the server's default


def _role_entry(low: float, high: float, low_open: bool) -> Callable[[str], str]:
    """An argparse type: `VALUE` or `ROLE=VALUE`, VALUE within [low, high] ((low, high] when low_open)."""
    def parse(text: str) -> str:
        role, _, number = text.rpartition("=")
        if role and role not in ROLES:
            raise argparse.ArgumentTypeError(f"unknown role {role!r} in {text!r}: roles are {', '.join(ROLES)}")
        try:
            value = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or ROLE=number, got {text!r}") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            bounds = f"greater than {low:g} and at most {high:g}" if low_open else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}")
        return text
    return parse


temperature_entry = _role_entry(0.0, 2.0, low_open=False)  # OpenAI's range
top_p_entry = _role_entry(0.0, 1.0, low_open=True)


def _per_role(entries: list[str] | None) -> dict[str, float]:
    values: dict[str, float] = {}
    for entry in entries or ():
        role, _, number = entry.rpartition("=")
        values.update({r: float(number) for r in ([role] if role else ROLES)})
    return values


def role_sampling(temperature: list[str] | None, top_p: list[str] | None) -> dict[str, Sampling]:
    """Each role's Sampling from the two flags' entries (already checked by the parser)."""
    temperatures, top_ps = _per_role(temperature), _per_role(top_p)
    return {role: Sampling(temperatures.get(role, 0.0), top_ps.get(role)) for role in ROLES}


def sampled(engine: ChatEngine, sampling: Sampling) -> ChatEngine:
    """The engine as a role sees it: a view with the role's sampling, or the engine itself at the defaults."""
    if sampling == Sampling():
        return engine
    return engine.sampled(temperature=sampling.temperature, top_p=sampling.top_p)
