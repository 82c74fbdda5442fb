"""Which engines of a runtime are asked for structured output (--structured_output), and which fell back.

A server that rejects the response_format field switches that engine (by name) to tags for the rest of
the runtime; the reply parsing itself is textgrad.structured's.
"""

from __future__ import annotations

import logging
import threading

from ..errors import EngineError, StructuredOutputRejected

logger = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


class ReplyFormats:
    """--structured_output: auto (structured where the backend has it, tags after a rejection), on (a
    rejection is an error), off (tags always)."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = "auto"
        self.configure(mode)
        self._tags_only: dict[str, str] = {}  # engine name -> why its server refused structured output
        self._lock = threading.Lock()

    def configure(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"structured output mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode

    def structured_for(self, engine_name: str) -> bool:
        """Whether this engine is asked for structured output now (its backend permitting)."""
        if self.mode == "off":
            return False
        with self._lock:
            return engine_name not in self._tags_only

    def fall_back(self, engine_name: str, exc: StructuredOutputRejected) -> None:
        """The engine's server refused structured output: tags from now on (EngineError in mode "on")."""
        if self.mode == "on":
            raise EngineError(f"{exc}; --structured_output auto falls back to tags, off never asks") from None
        with self._lock:
            first = engine_name not in self._tags_only
            self._tags_only.setdefault(engine_name, str(exc))
        if first:
            logger.warning("%s; using tags instead for the rest of the run", exc)

    def fallbacks(self) -> dict[str, str]:
        """Engines switched to tags because their server rejected structured output, with the reason."""
        with self._lock:
            return dict(self._tags_only)
