"""Lengths and UID measures of prompts, recorded for every client prompt and aggregate."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from textgrad.errors import EngineError
from textgrad.parallel import run_concurrently
from textgrad.serving.tokenizers import TokenCount, estimate_tokens

from .complexity import complexity
from .uid import uid_measures

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


def token_count(text: str, engine: Any = None) -> TokenCount:
    """The engine's token count of text (ChatEngine.token_count: exact where its tokenizer is reachable);
    textgrad's estimate, flagged as such, for an engine that cannot count or cannot be reached."""
    count = getattr(engine, "token_count", None)
    if count is not None:
        try:
            return count(text)
        except EngineError:  # the server went away; the run notices elsewhere, a length must not fail
            pass
    return TokenCount(estimate_tokens(text), exact=False)


def measure_prompt(text: str, engine: Any = None) -> dict[str, Any]:
    """Length in characters and tokens (the test engine's tokenizer where reachable; "tokens_estimated"
    says when it was not), character entropy and compression ratio (utils.reporting.complexity); with an
    engine, also the UID measures of the text (mean/variance/max per-token surprisal in nats, see
    utils.reporting.uid) where that engine exposes log-probabilities, else None."""
    tokens = token_count(text, engine)
    uid = cached_uid(text, engine) if engine is not None else None
    return {"chars": len(text), "tokens": tokens.tokens, "tokens_estimated": not tokens.exact, "uid": uid,
            **complexity(text)}


def measure_prompts(texts: dict[str, str], engine: Any = None) -> dict[str, dict[str, Any]]:
    """measure_prompt of each text (by name), side by side."""
    measured = run_concurrently([lambda text=text: measure_prompt(text, engine) for text in texts.values()])
    return dict(zip(texts, measured, strict=True))


def tokens_estimated(results: dict[str, Any]) -> bool:
    """Whether a run's recorded prompt lengths (results.json) are estimates rather than its tokenizer's
    counts; results written before the flag existed counted characters / 4."""
    return bool(results.get("prompt_tokens_estimated", True))


def token_axis_label(runs: list[dict[str, Any]]) -> str:
    """The unit of prompt lengths in plots and tables: "tokens (estimated)" if any run's are estimates."""
    return "tokens (estimated)" if any(tokens_estimated(r) for r in runs) else "tokens"
