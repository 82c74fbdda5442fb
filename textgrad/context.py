"""What a server says about its context window: its size, its overflow replies, and counts against it.

Servers answer these questions in different places (llama.cpp's /props, vLLM's model listing, Ollama's
/api/show; tokenizers in textgrad.tokenizers), and many do not answer at all; every probe here returns
None rather than fail, and the engine falls back to a flag, a default or a conservative estimate.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from . import local_server
from .endpoints import BACKENDS, Route, WindowProbe, get_json, post_json, server_root
from .settings import MIN_PLAUSIBLE_WINDOW
from .tokenizers import (
    ServerTokenizer,
    TiktokenTokenizer,
    TokenCount,
    Tokenizer,
    estimate_tokens,
    vocab_tokenizer,
)

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
# Chat templates wrap each message in role markers (~5 tokens with ChatML), and some (SmolLM2's) add
# a default system message of ~20 tokens when the request has none.
MESSAGE_OVERHEAD = 6
REQUEST_OVERHEAD = 8
DEFAULT_SYSTEM_ALLOWANCE = 24

# Self-hosted servers that do not report their window: llama.cpp's and Ollama's long-standing default.
SELF_HOSTED_DEFAULT_WINDOW = 2048
# OpenAI does not report windows; the prefixes of its model families and their sizes.
OPENAI_WINDOWS = (("gpt-3.5", 16385), ("gpt-4o", 128000), ("gpt-4.1", 1047576), ("gpt-4-turbo", 128000),
                  ("gpt-4", 8192), ("gpt-5", 272000), ("o1", 128000), ("o3", 200000), ("o4", 200000))
OPENAI_DEFAULT_WINDOW = 8192


# ---------------------------------------------------------------- counting


def message_overhead(messages: list[dict[str, Any]]) -> int:
    has_system = any(m.get("role") == "system" for m in messages)
    return REQUEST_OVERHEAD + MESSAGE_OVERHEAD * len(messages) + (0 if has_system else DEFAULT_SYSTEM_ALLOWANCE)


# ---------------------------------------------------------------- the window


def default_window(kind: str, model: str | None) -> int:
    if kind == "openai":
        name = (model or "").lower()
        for prefix, size in OPENAI_WINDOWS:
            if name.startswith(prefix):
                return size
        return OPENAI_DEFAULT_WINDOW
    return SELF_HOSTED_DEFAULT_WINDOW


def _plausible(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= MIN_PLAUSIBLE_WINDOW else None


def _from_model_listing(base_url: str, model: str, api_key: str) -> int | None:
    # vLLM and SGLang: {"data": [{"id": ..., "max_model_len": 4096}]}
    listing = get_json(f"{base_url}/models", api_key)
    entries = [e for e in listing.get("data", []) if isinstance(e, dict)]
    entries = [e for e in entries if e.get("id") == model] or entries[:1]
    return _plausible(entries[0].get("max_model_len")) if entries else None


def _from_props(base_url: str, model: str, api_key: str) -> int | None:
    # llama.cpp's llama-server: the context of one slot, which is what a request may use.
    props = get_json(f"{server_root(base_url)}/props", api_key)
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    value = settings.get("n_ctx") if isinstance(settings, dict) else None
    return _plausible(value if value is not None else props.get("n_ctx"))


_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)", re.MULTILINE)


def _from_ollama(base_url: str, model: str, api_key: str) -> int | None:
    info = post_json(f"{server_root(base_url)}/api/show", api_key, {"model": model, "name": model})
    # Ollama runs a model at its num_ctx (a Modelfile parameter, else the server's default), not at
    # the length it was trained for, and silently drops what does not fit: never exceed either.
    num_ctx = _NUM_CTX.search(str(info.get("parameters") or ""))
    trained = [v for k, v in (info.get("model_info") or {}).items() if k.endswith(".context_length")]
    trained_window = _plausible(trained[0]) if trained else None
    if num_ctx:
        return min(int(num_ctx.group(1)), trained_window or int(num_ctx.group(1)))
    return min(trained_window, SELF_HOSTED_DEFAULT_WINDOW) if trained_window else None


_PROBES: dict[WindowProbe, Callable[[str, str, str], int | None]] = {
    "ollama_show": _from_ollama, "model_listing": _from_model_listing, "props": _from_props}


def discover_window(kind: str, base_url: str, model: str, api_key: str) -> int | None:
    """The context window the server reports for model, or None if it does not say."""
    for name in BACKENDS[kind].window_probes:  # type: ignore[index]
        try:
            window = _PROBES[name](base_url, model, api_key)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError, TypeError):
            continue
        if window is not None:
            return window
    return None


# ---------------------------------------------------------------- overflow replies

_OVERFLOW_WORDS = re.compile(r"context (size|length|window)|maximum context|exceed_context|n_ctx|"
                             r"context_length_exceeded|too many tokens|prompt is too long", re.IGNORECASE)
_WINDOW_IN_MESSAGE = (re.compile(r"maximum context length is (\d+)", re.IGNORECASE),
                      re.compile(r"context window of (\d+)", re.IGNORECASE),
                      re.compile(r"n_ctx(?:_slot)?\s*[=:]\s*(\d+)", re.IGNORECASE))
_PROMPT_IN_MESSAGE = (re.compile(r"\((\d+) in the messages", re.IGNORECASE),
                      re.compile(r"n_prompt_tokens\s*[=:]\s*(\d+)", re.IGNORECASE))


def _error_detail(body: Any) -> dict[str, Any]:
    detail = body.get("error", body) if isinstance(body, dict) else {"message": body}
    return detail if isinstance(detail, dict) else {"message": detail}


def is_overflow(status: int, body: Any) -> bool:
    """True for a reply that rejects the request for its length (llama.cpp, vLLM, OpenAI wordings)."""
    if status not in (400, 413, 422):
        return False
    detail = _error_detail(body)
    text = " ".join(str(detail.get(k, "")) for k in ("message", "type", "code"))
    return bool(_OVERFLOW_WORDS.search(text))


def overflow_sizes(body: Any) -> tuple[int | None, int | None]:
    """(window, prompt tokens) as the overflow reply states them, each None when it does not."""
    detail = _error_detail(body)
    message = str(detail.get("message", ""))
    window = _plausible(detail.get("n_ctx"))
    prompt = _plausible(detail.get("n_prompt_tokens"))
    for pattern in _WINDOW_IN_MESSAGE:
        match = pattern.search(message) if window is None else None
        window = _plausible(match.group(1)) if match else window
    for pattern in _PROMPT_IN_MESSAGE:
        match = pattern.search(message) if prompt is None else None
        prompt = _plausible(match.group(1)) if match else prompt
    return window, prompt


# ---------------------------------------------------------------- one engine's view of its window

REJECTED_REMEMBERED = 4096
# Reported prompt sizes above our count raise later counts by their ratio, up to this factor.
MAX_COUNT_SCALE = 4.0


@dataclass(frozen=True)
class Connection:
    """Where an engine's model is served, once its server is up."""

    base_url: str
    model: str
    api_key: str
    embedded: bool          # the embedded server, started by this process with local_server.N_CTX
    model_file: str | None  # the GGUF file behind a llama.cpp server, when it is on this machine


class EngineContext:
    """The window of one engine and token counts against it, learned as the run goes.

    The window is the smallest of: what the server reports (asked once, lazily), the user's
    --max_context, and what overflow replies have since revealed; with neither report nor flag, a
    default for the kind of engine. Counts are exact where the server's tokenizer is reachable; else
    `estimate_tokens`, scaled up whenever the server reports more prompt tokens than we counted.
    """

    def __init__(self, route: Route, model_hint: str | None, override: int | None,
                 connect: Callable[[], Connection]) -> None:
        # connect() starts the embedded server if it is one, then says where the model is
        self.kind = route.kind
        self._route = route
        self.override = override
        self._model_hint = model_hint
        self._connect = connect
        self._window: int | None = None
        self.source = ""
        self._tokenizer: Tokenizer | None = None
        self._local_tokenizer = False
        self._scale = 1.0
        self._rejected: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()
        # The largest prompt + max_tokens of a request the server answered, by the server's own count
        # of the prompt where it reports one: the evidence that requests stayed within the window.
        self.largest_request = 0

    # -- the window -------------------------------------------------------------------------

    @property
    def window(self) -> int:
        with self._lock:
            if self._window is None:
                self._window, self.source = self._resolve()
                logger.info("context window of %s: %d tokens (%s)", self._model_hint or self.kind,
                            self._window, self.source)
            return self._window

    def _resolve(self) -> tuple[int, str]:
        where = self._connect()
        self._tokenizer = self._pick_tokenizer(where)
        if where.embedded:
            reported: int | None = local_server.N_CTX  # we started it with this --n_ctx
        else:
            reported = discover_window(self.kind, where.base_url, where.model, where.api_key)
        if reported is not None and self.override is not None:
            return (min(reported, self.override),
                    "--max_context" if self.override <= reported else "reported by the server")
        if reported is not None:
            return reported, "reported by the server"
        if self.override is not None:
            return self.override, "--max_context"
        return default_window(self.kind, where.model), f"default for {self.kind} engines"

    def _pick_tokenizer(self, where: Connection) -> Tokenizer | None:
        """The backend's exact counter (endpoints.Backend.tokenizer); the server's tokenize route where the
        model's vocabulary cannot be loaded here; None where there is nothing to ask."""
        source = self._route.backend.tokenizer
        if source == "vocab" and where.model_file is not None:
            vocab = vocab_tokenizer(where.model_file)
            if vocab is not None:
                self._local_tokenizer = True
                return vocab
        if source == "tiktoken":
            return TiktokenTokenizer(where.model)
        routes = self._route.backend.tokenize_routes
        return ServerTokenizer(where.base_url, where.model, where.api_key, routes) if routes else None

    def shrink_to(self, window: int, source: str) -> None:
        with self._lock:
            if window < self.window:
                self._window, self.source = window, source

    # -- counting ---------------------------------------------------------------------------

    def estimate(self, text: str) -> int:
        """Cheap upper count: exact when the tokenizer is in-process, else the scaled estimate."""
        if self._local_tokenizer:
            return self.count(text)
        return math.ceil(estimate_tokens(text) * self._scale)

    def count(self, text: str) -> int:
        """The model tokenizer's count where there is one, else the scaled estimate."""
        return self.token_count(text).tokens

    def token_count(self, text: str) -> TokenCount:
        """As count(), and whether the number is the tokenizer's (exact) or the scaled estimate."""
        self.window  # noqa: B018 - resolves the tokenizer together with the window
        if not text:
            return TokenCount(0, exact=True)
        if self._tokenizer is not None:
            exact = self._tokenizer.count(text)
            if exact is not None:
                return TokenCount(exact, exact=True)
        return TokenCount(math.ceil(estimate_tokens(text) * self._scale), exact=False)

    def messages(self, messages: list[dict[str, Any]], exact: bool = False) -> int:
        measure = self.count if exact else self.estimate
        return sum(measure(str(m.get("content") or "")) for m in messages) + message_overhead(messages)

    def calibrate(self, messages: list[dict[str, Any]], reported_prompt_tokens: int) -> None:
        """Raise the estimate's scale when the server counted more prompt tokens than we did."""
        if self._local_tokenizer or reported_prompt_tokens <= 0:
            return
        estimated = self.messages(messages)
        if reported_prompt_tokens > estimated:
            with self._lock:
                self._scale = min(MAX_COUNT_SCALE, self._scale * reported_prompt_tokens / estimated)

    def answered(self, prompt_tokens: int, max_tokens: int) -> None:
        with self._lock:
            self.largest_request = max(self.largest_request, prompt_tokens + max_tokens)

    # -- overflow replies -------------------------------------------------------------------

    @staticmethod
    def _fingerprint(messages: list[dict[str, Any]], max_tokens: int) -> str:
        return json.dumps([messages, max_tokens], sort_keys=True, ensure_ascii=False)

    def was_rejected(self, messages: list[dict[str, Any]], max_tokens: int) -> bool:
        with self._lock:
            return self._fingerprint(messages, max_tokens) in self._rejected

    def rejected(self, messages: list[dict[str, Any]], max_tokens: int, body: Any) -> tuple[int | None, int]:
        """Record an overflow reply; returns (the window it states or None, prompt tokens it states or ours)."""
        window, prompt_tokens = overflow_sizes(body)
        counted = self.messages(messages)
        with self._lock:
            self._rejected[self._fingerprint(messages, max_tokens)] = None
            if len(self._rejected) > REJECTED_REMEMBERED:
                self._rejected.popitem(last=False)
        if prompt_tokens is not None:
            self.calibrate(messages, prompt_tokens)
        if window is not None:
            self.shrink_to(window, "stated by an overflow reply")
        return window, prompt_tokens if prompt_tokens is not None else counted
