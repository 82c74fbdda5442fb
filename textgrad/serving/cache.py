"""On-disk cache of LLM responses, safe to share between processes.

One JSON file per entry keeps writers independent: there is no index file to
lock, and a crash can at worst leave a stray temporary file, never a broken
entry, because entries appear only through an atomic rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from .stats import EngineStats

logger = logging.getLogger(__name__)


class ResponseCache:
    """Content-addressed store mapping a request key to a JSON-serialisable dict."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser()
        self._host = socket.gethostname()  # a cache folder may be shared over the network

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.directory)!r})"

    @staticmethod
    def make_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any], *, endpoint: str) -> str:
        """Hash of the request and of the server it goes to; sorted keys and fixed separators make it
        stable across runs."""
        canonical = json.dumps(
            {"endpoint": endpoint, "model": model, "messages": messages, "params": params},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @staticmethod
    def request_key(body: dict[str, Any], *, endpoint: str) -> str:
        """make_key of a request body as sent (textgrad.serving.transport.chat_body): every field besides
        the model and the messages (sampling, max_tokens, response_format) is a parameter."""
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        return ResponseCache.make_key(body["model"], body["messages"], params, endpoint=endpoint)

    def path(self, key: str) -> Path:
        """The entry's file. Two-character fan-out keeps directories small on long experiment grids."""
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored value, or None when absent or unreadable (treated as a miss)."""
        try:
            with open(self.path(key), encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store a value atomically: readers see either the old entry, the new one, or none."""
        path = self.path(key)
        data = json.dumps(value, ensure_ascii=False).encode("utf-8")
        # The temporary file must live in the target directory so os.replace is a rename on one
        # filesystem, which is atomic. Its name is this writer's own (host, process, thread: a thread
        # writes one entry at a time), so writers never collide and no random name has to be tried, as
        # tempfile would; a leftover of a dead process under the same name is simply overwritten.
        tmp = path.with_name(f".{key[:16]}-{self._host}-{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:  # the first entry of its fan-out folder
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class CachedReplies:
    """The response cache as one engine uses it: hits and misses counted in its stats, and a write that
    fails (a full or read-only disk) logged, never raised, since the call it stores was already paid for."""

    def __init__(self, cache: ResponseCache, stats: EngineStats) -> None:
        self.cache = cache
        self._stats = stats

    def lookup(self, key: str, field: str, kind: type, *, counted: bool = True) -> dict[str, Any] | None:
        """The entry under key if its `field` is a `kind`; counted as a hit or a miss unless counted=False."""
        entry = self.cache.get(key)
        hit = entry if entry is not None and isinstance(entry.get(field), kind) else None
        if counted:
            self._stats.add(**{"cache_hits" if hit is not None else "cache_misses": 1})
        return hit

    def store(self, key: str, value: dict[str, Any]) -> None:
        try:
            self.cache.put(key, value)
        except OSError as exc:
            logger.warning("could not write the response cache in %s: %s", self.cache.directory, exc)
