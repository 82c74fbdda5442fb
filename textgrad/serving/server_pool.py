"""Several identical servers behind one endpoint: each request goes to the least busy one.

A pool is known by the URL of its first server, which is the URL engines hold: the endpoint's concurrency
cap, the response cache, token counting and the context window are all keyed by it, so none of them
depends on which server of the pool answered. Only the chat and log-probability requests themselves are
spread (``member_of``). The embedded llama.cpp pool (textgrad.serving.embedded) and a comma-separated
LOCAL_BASE_URL (servers started by scripts/llamacpp_serve.sh, kept in a runtime's ``ServerPools``) are
both pools.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

# A remote server that refused a connection gets no request for this long (it may be restarting).
REMOTE_DOWN_S = 10.0
CONNECTION_ERRORS = (httpx.TransportError,)


@dataclass
class Member:
    base_url: str
    in_flight: int = 0
    down_until: float = 0.0  # time.monotonic() before which it gets no request; inf: until replaced


class Pool:
    """Servers that answer alike. `on_failure(index, exc)` is told of every failed request and returns
    how long (s) that server is to be avoided; by default connection errors make it wait REMOTE_DOWN_S."""

    def __init__(self, urls: list[str], on_failure: Callable[[int, BaseException], float] | None = None) -> None:
        if not urls:
            raise ValueError("a pool needs at least one server")
        self.members = [Member(url) for url in urls]
        self._on_failure = on_failure or _avoid_after_connection_error
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.members)

    def urls(self) -> list[str]:
        return [m.base_url for m in self.members]

    def _least_busy(self) -> int:
        now = time.monotonic()
        live = [i for i, m in enumerate(self.members) if m.down_until <= now] or range(len(self.members))
        # Ties go to the lowest index, so one request at a time always reaches the first server.
        return min(live, key=lambda i: (self.members[i].in_flight, i))

    @contextlib.contextmanager
    def member(self) -> Iterator[str]:
        """The base URL of the least busy live server, counted as busy until the block ends."""
        with self._lock:
            index = self._least_busy()
            chosen = self.members[index]
            chosen.in_flight += 1
        try:
            yield chosen.base_url
        except BaseException as exc:
            avoid = self._on_failure(index, exc)
            if avoid > 0:
                with self._lock:
                    chosen.down_until = max(chosen.down_until, time.monotonic() + avoid)
            raise
        finally:
            with self._lock:
                chosen.in_flight -= 1

    def replace(self, index: int, base_url: str) -> None:
        """A restarted server took the place of the one at index (maybe on another port)."""
        with self._lock:
            old = self.members[index]
            self.members[index] = Member(base_url, in_flight=old.in_flight if old.base_url == base_url else 0)


def _avoid_after_connection_error(index: int, exc: BaseException) -> float:
    read_timeout = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
    return REMOTE_DOWN_S if isinstance(exc, CONNECTION_ERRORS) and not read_timeout else 0.0


class ServerPools:
    """A runtime's pools of already running servers (a comma-separated LOCAL_BASE_URL), each known by its
    first URL; the embedded pool is its own (textgrad.serving.embedded)."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}
        self._lock = threading.Lock()

    def register_urls(self, urls: tuple[str, ...]) -> None:
        """The servers of urls as one pool behind urls[0], registered once; a single URL is no pool."""
        with self._lock:
            if len(urls) > 1 and urls[0] not in self._pools:
                self._pools[urls[0]] = Pool(list(urls))

    def pool_of(self, base_url: str) -> Pool | None:
        with self._lock:
            return self._pools.get(base_url)


@contextlib.contextmanager
def member_of(pool: Pool | None, base_url: str) -> Iterator[str]:
    """The server to send one request to: the least busy of pool, or base_url itself without one."""
    if pool is None:
        yield base_url
        return
    with pool.member() as url:
        yield url
