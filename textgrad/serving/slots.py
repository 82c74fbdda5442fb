"""The per-endpoint cap on requests in flight, with a background priority for work off the critical path.

Requests beyond the cap wait; a freed slot goes to the longest-waiting foreground request, and to a
background one only when no foreground request waits. Work whose result nobody waits for yet (the
zero-shot evaluation while round 1 trains) runs under ``background()`` and so fills the slots the
critical path leaves idle without delaying it. Priority only orders waiters, so foreground work that
starts beside background work first reserves the slots of its first wave (``reserve``): otherwise
whichever thread reaches the cap first takes them, and the critical path waits a whole reply for
work that could wait. A runtime holds one ``EndpointCaps``: the cap of every endpoint its engines
talk to.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import logging
import threading
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
        self._reserved = 0  # free slots only foreground requests may take (see reserve())
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, int, threading.Lock]] = []  # heap of (priority, arrival, gate)
        self._arrivals = itertools.count()

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
        with self._lock:
            if self._free >= self.size:
                raise ValueError("EndpointSlots released more often than acquired")
            self._free += 1
            self._hand_over()

    def reserve(self, slots: int) -> None:
        """Keep `slots` free slots for the next foreground requests (each one that takes a slot uses a
        reserved one up): background requests take only the slots beyond them. reserve(0) ends it."""
        with self._lock:
            self._reserved = min(slots, self.size)
            self._hand_over()  # background requests held back by what was left of an earlier reservation

    def _take(self, foreground: bool) -> None:
        self._free -= 1
        if foreground and self._reserved:
            self._reserved -= 1

    def _hand_over(self) -> None:
        """Give free slots to waiters, foreground first; background ones only beyond the reservation."""
        while self._free and self._waiting:
            foreground = self._waiting[0][0] == 0
            if not foreground and self._free <= self._reserved:
                return
            self._take(foreground)
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
