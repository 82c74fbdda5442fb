"""The per-endpoint cap on requests in flight, with a background priority for work off the critical path.

Requests beyond the cap wait; a freed slot goes to the longest-waiting foreground request, and to a
background one only when no foreground request waits. An endpoint that answered 429 with Retry-After is
held off: until that time no request goes to it, whichever call got the 429 (`hold_off`). Work whose result nobody waits for yet (the
zero-shot evaluation while round 1 trains) runs under ``background()`` and so fills the slots the
critical path leaves idle without delaying it. A runtime holds one ``EndpointCaps``: the cap of every
endpoint its engines talk to.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Iterator

logger = logging.getLogger(__name__)

_background: contextvars.ContextVar[bool] = contextvars.ContextVar("fedtextgrad_background", default=False)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Requests made inside (also from threads started by textgrad.parallel) yield to foreground ones."""
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


class EndpointSlots:
    """A counting semaphore of `size` slots whose waiters are served foreground first, then by arrival."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an endpoint needs at least one slot")
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, threading.Lock]] = []  # heap of (priority, arrival, gate)
        self._arrivals = itertools.count()
        self._held_until = 0.0  # time.monotonic() before which no request may go out

    def hold_off(self, seconds: float) -> None:
        """No request to this endpoint for `seconds` from now (the server asked with Retry-After)."""
        with self._lock:
            self._held_until = max(self._held_until, time.monotonic() + seconds)

    def held_for(self) -> float:
        """Seconds until requests may go out again; 0 when they may now."""
        with self._lock:
            return max(0.0, self._held_until - time.monotonic())

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            gate = threading.Lock()
            gate.acquire()
            ticket = (1 if _background.get() else 0, next(self._arrivals), gate)
            heapq.heappush(self._waiting, ticket)
        try:
            gate.acquire()  # release() hands its slot over by opening the gate
        except BaseException:  # e.g. KeyboardInterrupt: give back or withdraw, never leak a slot
            with self._lock:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    raise
            self.release()
            raise

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[2].release()
            elif self._free < self.size:
                self._free += 1
            else:
                raise ValueError("EndpointSlots released more often than acquired")

    def __enter__(self) -> EndpointSlots:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class EndpointCaps:
    """The cap of each endpoint, by its base URL, created on first use."""

    def __init__(self) -> None:
        self._slots: dict[str, EndpointSlots] = {}
        self._lock = threading.Lock()

    def for_endpoint(self, base_url: str, size: int) -> EndpointSlots:
        """The cap on requests in flight to base_url, shared by every engine on it: a vLLM server used as
        both test and evaluation engine must see at most `size` requests from us, not `size` per engine."""
        with self._lock:
            slots = self._slots.get(base_url)
            if slots is None:
                slots = self._slots[base_url] = EndpointSlots(size)
            elif slots.size != size:
                logger.warning("endpoint %s already capped at %s concurrent requests; keeping that cap",
                               base_url, slots.size)
            return slots
