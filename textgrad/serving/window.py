"""What a server says about its context window: its size, and the sizes its overflow replies state.

Servers answer in different places (llama.cpp's /props, vLLM's model listing, Ollama's /api/show), and
many do not answer at all; every probe here returns None rather than fail, and the engine falls back to
a flag or a default (textgrad.serving.context.EngineContext).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from .backends import BACKENDS, WindowProbe
from .http import HttpClients, server_root
from .settings import MIN_PLAUSIBLE_WINDOW

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


def _from_model_listing(http: HttpClients, base_url: str, model: str, api_key: str) -> int | None:
    # vLLM and SGLang: {"data": [{"id": ..., "max_model_len": 4096}]}
    listing = http.get_json(f"{base_url}/models", api_key)
    entries = [e for e in listing.get("data", []) if isinstance(e, dict)]
    entries = [e for e in entries if e.get("id") == model] or entries[:1]
    return _plausible(entries[0].get("max_model_len")) if entries else None


def _from_props(http: HttpClients, base_url: str, model: str, api_key: str) -> int | None:
    # llama.cpp's llama-server: the context of one slot, which is what a request may use.
    props = http.get_json(f"{server_root(base_url)}/props", api_key)
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    value = settings.get("n_ctx") if isinstance(settings, dict) else None
    return _plausible(value if value is not None else props.get("n_ctx"))


_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)", re.MULTILINE)


def _from_ollama(http: HttpClients, base_url: str, model: str, api_key: str) -> int | None:
    info = http.post_json(f"{server_root(base_url)}/api/show", api_key, {"model": model, "name": model})
    # Ollama runs a model at its num_ctx (a Modelfile parameter, else the server's default), not at
    # the length it was trained for, and silently drops what does not fit: never exceed either.
    num_ctx = _NUM_CTX.search(str(info.get("parameters") or ""))
    trained = [v for k, v in (info.get("model_info") or {}).items() if k.endswith(".context_length")]
    trained_window = _plausible(trained[0]) if trained else None
    if num_ctx:
        return min(int(num_ctx.group(1)), trained_window or int(num_ctx.group(1)))
    return min(trained_window, SELF_HOSTED_DEFAULT_WINDOW) if trained_window else None


_PROBES: dict[WindowProbe, Callable[[HttpClients, str, str, str], int | None]] = {
    "ollama_show": _from_ollama, "model_listing": _from_model_listing, "props": _from_props}


def discover_window(http: HttpClients, kind: str, base_url: str, model: str, api_key: str) -> int | None:
    """The context window the server reports for model, or None if it does not say."""
    for name in BACKENDS[kind].window_probes:  # type: ignore[index]
        try:
            window = _PROBES[name](http, base_url, model, api_key)
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
