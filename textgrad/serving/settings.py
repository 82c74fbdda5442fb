"""A runtime's defaults for the engines it creates: cache, concurrency, timeouts, context, embedded servers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A window no server will ask us to respect is no window: reports and --max_context below it are absurd.
MIN_PLAUSIBLE_WINDOW = 64

DEFAULT_MAX_CONCURRENCY = 16
# The deadline of a whole request (textgrad.serving.http), queueing at the server included. Generous: the
# embedded server answers one request at a time, so a request may wait behind max_concurrency others
# (16 replies of 512 tokens at ~45 tokens/s is about 3 minutes); short enough that a stalled server
# costs minutes, not half an hour (three timeouts end a call).
DEFAULT_REQUEST_TIMEOUT_S = 300.0

_UNSET: Any = object()


@dataclass
class Settings:
    cache_dir: str | None = None  # None: FEDTEXTGRAD_CACHE_DIR or ~/.cache/fedtextgrad
    use_cache: bool = True
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    max_context: int | None = None  # None: ask the server, else a default per kind of engine
    local_servers: int | None = None  # None: LOCAL_SERVERS, else one per core (textgrad.serving.embedded.pool_size)

    def update(
        self,
        *,
        cache_dir: str | None = _UNSET,
        use_cache: bool = _UNSET,
        max_concurrency: int = _UNSET,
        request_timeout: float = _UNSET,
        max_context: int | None = _UNSET,
        local_servers: int | None = _UNSET,
    ) -> None:
        """Change the settings given (ValueError for an impossible one); ``cache_dir=None`` goes back to the
        default location. Engines already created keep the settings they were made with."""
        if cache_dir is not _UNSET:
            self.cache_dir = None if cache_dir is None else str(cache_dir)
        if use_cache is not _UNSET:
            self.use_cache = bool(use_cache)
        if max_concurrency is not _UNSET:
            if int(max_concurrency) < 1:
                raise ValueError("max_concurrency must be at least 1")
            self.max_concurrency = int(max_concurrency)
        if request_timeout is not _UNSET:
            if float(request_timeout) <= 0:
                raise ValueError("request_timeout must be positive")
            self.request_timeout = float(request_timeout)
        if max_context is not _UNSET:
            if max_context is not None and int(max_context) < MIN_PLAUSIBLE_WINDOW:
                raise ValueError(f"max_context must be at least {MIN_PLAUSIBLE_WINDOW} tokens")
            self.max_context = None if max_context is None else int(max_context)
        if local_servers is not _UNSET:
            if local_servers is not None and int(local_servers) < 1:
                raise ValueError("local_servers must be at least 1")
            self.local_servers = None if local_servers is None else int(local_servers)

    def cache_directory(self) -> str:
        """The response cache's folder, absolute: cache_dir, else FEDTEXTGRAD_CACHE_DIR, else ~/.cache/fedtextgrad."""
        if self.cache_dir:
            return str(Path(self.cache_dir).expanduser().resolve())
        env = os.environ.get("FEDTEXTGRAD_CACHE_DIR")
        base = Path(env) if env else Path.home() / ".cache" / "fedtextgrad"
        return str(base.expanduser().resolve())
