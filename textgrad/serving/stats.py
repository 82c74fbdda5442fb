"""Counters of LLM calls: per engine, and per phase of a run through `metered()` context meters; the wall
seconds of each kind of call through `paced()` ones (CallPace)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
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
    context_shortened: int = 0  # requests whose reply limit (max_tokens) was lowered to fit the window
    context_dropped: int = 0    # whole items (feedback, earlier versions) left out of requests to fit the window
    context_skipped: int = 0    # calls given up because they cannot fit, no text being ever cut
    invalid_replies: int = 0    # attempts answered with no usable chat completion (HTML, bad bytes, not JSON)
    overlong_replies: int = 0   # replies far longer than their max_tokens, cut there
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    _COUNTERS = ("calls", "prompt_tokens", "completion_tokens", "cache_hits",
                 "cache_misses", "retries", "failures", "context_overflows", "context_shortened",
                 "context_dropped", "context_skipped", "invalid_replies", "overlong_replies")

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


# ---------------------------------------------------------------- the pace of each kind of call

# The kind of the calls made in the current context (see call_kind): "answer", "feedback", "optimizer",
# "merge", "judge", "logprob" (a prompt's log-probabilities); "other" when no caller said.
_kind: contextvars.ContextVar[str] = contextvars.ContextVar("fedtextgrad_call_kind", default="other")


@contextlib.contextmanager
def call_kind(kind: str) -> Iterator[None]:
    """The requests sent inside the block (also from the threads it starts through textgrad.parallel) are
    of this kind for every CallPace that times them."""
    token = _kind.set(kind)
    try:
        yield
    finally:
        _kind.reset(token)


@dataclass(frozen=True)
class Pace:
    """What a CallPace measured: requests sent and the wall seconds charged to them, per kind; `busy`: the
    wall seconds with at least one request in flight."""

    calls: dict[str, int]
    seconds: dict[str, float]
    busy: float


class CallPace:
    """Wall seconds of each kind of request, measured while requests run side by side.

    While n requests are in flight, each is charged 1/n of the time, so the charges add up to the wall
    time with any request in flight (`busy`), however many servers, slots and queues there are. A kind's
    seconds per request is then what one more request of that kind adds to a run's wall time, at the
    crowding the run had: a run's remaining time is its remaining requests of each kind times their pace.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._charged = 0.0  # seconds charged so far to each request that was in flight all along
        self._busy = 0.0
        self._last = clock()
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}

    def _advance(self) -> None:
        now = self._clock()
        if self._in_flight:
            self._charged += (now - self._last) / self._in_flight
            self._busy += now - self._last
        self._last = now

    def begin(self) -> float:
        """A request goes out; returns its mark for end()."""
        with self._lock:
            self._advance()
            self._in_flight += 1
            return self._charged

    def end(self, kind: str, mark: float) -> None:
        with self._lock:
            self._advance()
            self._in_flight -= 1
            self._calls[kind] = self._calls.get(kind, 0) + 1
            self._seconds[kind] = self._seconds.get(kind, 0.0) + self._charged - mark

    def snapshot(self) -> Pace:
        with self._lock:
            self._advance()
            return Pace(dict(self._calls), dict(self._seconds), self._busy)


_paces: contextvars.ContextVar[tuple[CallPace, ...]] = contextvars.ContextVar("fedtextgrad_paces", default=())


@contextlib.contextmanager
def paced(pace: CallPace) -> Iterator[CallPace]:
    """Requests sent inside the block, also from the threads it starts, are timed by pace."""
    token = _paces.set((*_paces.get(), pace))
    try:
        yield pace
    finally:
        _paces.reset(token)


@contextlib.contextmanager
def on_the_wire(kind: str | None = None) -> Iterator[None]:
    """Around one request while it is with the server: timed by every CallPace of the context, as `kind`
    or the context's kind (call_kind)."""
    paces = _paces.get()
    marks = [pace.begin() for pace in paces]
    try:
        yield
    finally:
        for pace, mark in zip(paces, marks, strict=True):
            pace.end(kind or _kind.get(), mark)
