"""The per-endpoint cap on requests in flight, with a background priority for work off the critical path.

Requests beyond the cap wait; a freed slot goes to the longest-waiting foreground request, and to a
background one only when no foreground request waits. An endpoint that answered 429 with Retry-After is
held off: until that time no request goes to it, whichever call got the 429 (`hold_off`). Work whose result nobody waits for yet (the
zero-shot evaluation while round 1 trains) runs under ``background()`` and so fills the slots the
critical path leaves idle. Priority alone cannot keep it off the critical path: a reply frees a slot
a few milliseconds before the foreground thread that got it sends its next request, and a background
request that takes the slot meanwhile holds it for a whole reply. So foreground work started beside
background work keeps the slots of its widest wave out of the background's reach (``reserve``). A
runtime holds one ``EndpointCaps``: the cap of every endpoint its engines talk to.
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
    """A counting semaphore of `size` slots whose waiters are served foreground first, then by arrival;
    background requests hold at most `size - reserved` slots."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an endpoint needs at least one slot")
        self.size = size
        self._free = size
        self._background_cap = size  # slots background requests may hold at once (see reserve())
        self._background_held = 0
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
        gate = threading.Lock()
        gate.acquire()
        ticket = (1 if _background.get() else 0, next(self._arrivals), gate)
        with self._lock:
            heapq.heappush(self._waiting, ticket)
            self._hand_over()  # at once if a slot is free for it
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
        """Give back a slot; called in the context that acquired it (background or not)."""
        with self._lock:
            if self._free >= self.size:
                raise ValueError("EndpointSlots released more often than acquired")
            self._free += 1
            if _background.get():
                self._background_held -= 1
            self._hand_over()

    def reserve(self, slots: int) -> None:
        """Keep `slots` slots out of the reach of background requests (those in flight keep theirs) until
        reserve(0): foreground work about to run beside background work needs that many at every wave."""
        with self._lock:
            self._background_cap = self.size - min(slots, self.size)
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to waiters, foreground first; background ones only within their cap."""
        while self._free and self._waiting:
            background = self._waiting[0][0] == 1
            if background:
                if self._background_held >= self._background_cap:
                    return  # every foreground waiter was served before: the rest are background too
                self._background_held += 1
            self._free -= 1
            heapq.heappop(self._waiting)[2].release()

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
