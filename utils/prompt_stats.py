"""Lengths and UID measures of prompts, recorded for every client prompt and aggregate."""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any

from .uid import uid_measures


def estimate_tokens(text: str) -> int:
    # About four characters per token for English BPE vocabularies; a conservative stand-in
    # wherever the serving model's own tokenizer is not asked.
    return math.ceil(len(text) / 4)


# engine -> text -> UID measures: a prompt returned unchanged by several clients, or kept over rounds,
# is measured once per engine and process (each measurement is a full pass of the prompt on the server).
_uid_cache: weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any] | None]] = weakref.WeakKeyDictionary()
_uid_lock = threading.Lock()
_uid_pending: dict[tuple[int, str], threading.Event] = {}


def uid_enabled() -> bool:
    """FEDTEXTGRAD_UID=0 switches the measurement off (it costs a pass of each new prompt)."""
    return os.environ.get("FEDTEXTGRAD_UID", "1").strip().lower() not in ("0", "off", "false", "no")


def cached_uid(text: str, engine: Any) -> dict[str, Any] | None:
    if not uid_enabled():
        return None
    while True:
        with _uid_lock:
            known = _uid_cache.setdefault(engine, {})
            if text in known:
                return known[text]
            # The same text measured from two threads at once (a centralized run's client prompt and its
            # aggregate) waits for the first measurement instead of requesting it twice.
            pending = _uid_pending.get((id(engine), text))
            if pending is None:
                pending = _uid_pending[(id(engine), text)] = threading.Event()
                break
        pending.wait()
    try:
        measures = uid_measures(text, engine)
        with _uid_lock:
            known[text] = measures
    finally:
        with _uid_lock:
            _uid_pending.pop((id(engine), text)).set()
    return measures


def measure_prompt(text: str, engine: Any = None) -> dict[str, Any]:
    """Length in characters and tokens; with an engine, also the UID measures of the text
    (mean/variance/max per-token surprisal in nats, see utils.uid) where that engine exposes
    log-probabilities, else None."""
    uid = cached_uid(text, engine) if engine is not None else None
    return {"chars": len(text), "tokens": estimate_tokens(text), "uid": uid}
