"""A runtime: all the state the engines of a process share, in one object a caller creates and throws away.

It owns the settings new engines get, the stop flag, one HTTP client per server, the per-endpoint caps,
the pools of running servers, the embedded llama.cpp pool, the loaded vocabularies, the reply-format
fallbacks, the engines created so far and the backward engine. Nothing of it lives in module globals:
a test makes a fresh `Runtime()`, activates it with `use_runtime`, and closes it after.

Code that never chooses one (a TextGrad user's `tg.get_engine("gpt-4o")`, main.py) uses the default
runtime, created on first use by `current_runtime()`; `use_runtime(runtime)` replaces it for a block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from .embedded import EmbeddedPool
from .http import HttpClients
from .interrupt import StopFlag
from .reply_formats import ReplyFormats
from .server_pool import Pool, ServerPools
from .settings import Settings
from .slots import EndpointCaps
from .tokenizers import Vocabularies


class Runtime:
    """The shared state of a set of engines, with a copy of `settings` of its own. Pass `embedded` to share
    one embedded pool between runtimes (a test session starts llama.cpp once); a runtime stops only the
    pool it made itself."""

    def __init__(self, settings: Settings | None = None, *, embedded: EmbeddedPool | None = None) -> None:
        self.settings = dataclasses.replace(settings) if settings is not None else Settings()
        self.stop = StopFlag()
        self.http = HttpClients()
        self.caps = EndpointCaps()
        self.pools = ServerPools()
        self._owns_embedded = embedded is None
        self.embedded = embedded or EmbeddedPool(self.http, self.stop)
        self.vocabs = Vocabularies()
        self.reply_formats = ReplyFormats()
        self.backward_engine: Any = None  # tg.set_backward_engine's engine
        self._engines: dict[Hashable, Any] = {}
        self._engines_lock = threading.Lock()

    def configure(self, **changes: Any) -> None:
        """Change the settings of engines created from now on (see Settings.update)."""
        self.settings.update(**changes)

    # -- engines -----------------------------------------------------------------------------

    def engine(self, key: Hashable, create: Callable[[], Any]) -> Any:
        """The engine memoised under key, made by create() the first time (textgrad.engine.get_engine)."""
        with self._engines_lock:
            if key not in self._engines:
                self._engines[key] = create()
            return self._engines[key]

    def engines(self) -> list[Any]:
        with self._engines_lock:
            return list(self._engines.values())

    def engine_stats(self) -> dict[str, dict[str, int]]:
        """Counters per engine name, summed over engines of the same name (e.g. two cache dirs)."""
        totals: dict[str, dict[str, int]] = {}
        for engine in self.engines():
            stats = engine.stats.as_dict()
            if engine.name in totals:
                for counter, value in stats.items():
                    totals[engine.name][counter] += value
            else:
                totals[engine.name] = stats
        return totals

    def context_windows(self) -> dict[str, dict[str, Any]]:
        """The window of every engine that has resolved one, and where it came from (for results.json)."""
        return {engine.name: {"tokens": engine.context_window, "source": engine.context.source,
                              "largest_request": engine.context.largest_request}
                for engine in self.engines() if engine.context.source}

    # -- servers -----------------------------------------------------------------------------

    def pool_of(self, base_url: str) -> Pool | None:
        """The servers behind base_url when it stands for several (embedded or LOCAL_BASE_URL), else None."""
        return self.embedded.pool_at(base_url) or self.pools.pool_of(base_url)

    def ensure_embedded(self) -> str:
        """Start the embedded pool (once) with this runtime's --local_servers and return its URL."""
        return self.embedded.ensure(self.settings.local_servers)

    def close(self) -> None:
        """Stop what this runtime started and release its connections and vocabularies."""
        if self._owns_embedded:
            self.embedded.stop()
        self.http.close()
        self.vocabs.close()


class _Default:
    """The runtime of code that chooses none: made on first use, replaced by use_runtime."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.lock = threading.Lock()


_default = _Default()


def current_runtime() -> Runtime:
    """The runtime in use: the one use_runtime activated, else the process's default (made now if need be)."""
    with _default.lock:
        if _default.runtime is None:
            _default.runtime = Runtime()
        return _default.runtime


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Make runtime the current one, for every thread, until the block ends; then restore the previous."""
    with _default.lock:
        previous, _default.runtime = _default.runtime, runtime
    try:
        yield runtime
    finally:
        with _default.lock:
            _default.runtime = previous


def stop_default_embedded() -> None:
    """Stop the default runtime's embedded servers if one was made (main.py's exit skips atexit)."""
    with _default.lock:
        runtime = _default.runtime
    if runtime is not None:
        runtime.embedded.stop()
