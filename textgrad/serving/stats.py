"""Counters of LLM calls: per engine, and per phase of a run through `metered()` context meters."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    """Per-engine counters, updated from many threads."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    retries: int = 0
    failures: int = 0
    context_overflows: int = 0  # overflow replies from the server (HTTP 400 naming the context)
    context_shortened: int = 0  # requests cut down to fit the window before they were sent
    context_skipped: int = 0    # calls given up because not even the shortest version fits
    invalid_replies: int = 0    # attempts answered with no usable chat completion (HTML, bad bytes, not JSON)
    overlong_replies: int = 0   # replies far longer than their max_tokens, cut there
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    _COUNTERS = ("calls", "prompt_tokens", "completion_tokens", "cache_hits",
                 "cache_misses", "retries", "failures", "context_overflows", "context_shortened",
                 "context_skipped", "invalid_replies", "overlong_replies")

    def add(self, **deltas: int) -> None:
        self._bump(deltas)
        for meter in _meters.get():
            meter._bump(deltas)

    def _bump(self, deltas: dict[str, int]) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in self._COUNTERS}


# The meters of the current context (see metered()): every counter update also lands in each of them.
_meters: contextvars.ContextVar[tuple[EngineStats, ...]] = contextvars.ContextVar("fedtextgrad_meters",
                                                                                  default=())


@contextlib.contextmanager
def metered(meter: EngineStats | None = None) -> Iterator[EngineStats]:
    """Counters of the calls made inside the block, by any engine, also from the threads it starts
    through textgrad.parallel: the cost of one phase of a run while other phases run beside it.
    Given a meter, the block counts on into it (a phase that began in another thread or block)."""
    meter = meter if meter is not None else EngineStats()
    token = _meters.set((*_meters.get(), meter))
    try:
        yield meter
    finally:
        _meters.reset(token)
