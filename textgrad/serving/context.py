"""One engine's context window and token counts against it, learned as the run goes, and the guard that
keeps every request inside it (prompt tokens + max_tokens <= the window).

Requests built by textgrad.serving.budget already fit; `EngineContext.fit_reply` guards every other
caller, and `EngineContext.overflow` turns a server's "too long" reply into a ContextOverflowError.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ContextOverflowError
from .backends import Route
from .http import HttpClients
from .stats import EngineStats
from .tokenizers import (
    ServerTokenizer,
    TiktokenTokenizer,
    TokenCount,
    Tokenizer,
    Vocabularies,
    estimate_tokens,
)
from .window import default_window, discover_window, message_overhead, overflow_sizes

logger = logging.getLogger(__name__)

REJECTED_REMEMBERED = 4096
# Reported prompt sizes above our count raise later counts by their ratio, up to this factor.
MAX_COUNT_SCALE = 4.0
# The reply's max_tokens is lowered to fit the window, but not below this: a shorter reply is rarely usable.
MIN_REPLY_TOKENS = 16


@dataclass(frozen=True)
class Connection:
    """Where an engine's model is served, once its server is up."""

    base_url: str
    model: str
    api_key: str
    known_window: int | None  # the window the server was started with by this process (the embedded one)
    model_file: str | None    # the GGUF file behind a llama.cpp server, when it is on this machine


class EngineContext:
    """The window of one engine and token counts against it.

    The window is the smallest of: what the server reports (asked once, lazily), the user's
    --max_context, and what overflow replies have since revealed; with neither report nor flag, a
    default for the kind of engine. Counts are exact where the server's tokenizer is reachable; else
    `estimate_tokens`, scaled up whenever the server reports more prompt tokens than we counted.
    Shortened requests and overflow replies are counted in `stats`.
    """

    def __init__(self, name: str, route: Route, override: int | None, connect: Callable[[], Connection], *,
                 http: HttpClients, vocabs: Vocabularies, stats: EngineStats) -> None:
        # connect() starts the embedded server if it is one, then says where the model is
        self.name = name
        self.kind = route.kind
        self._route = route
        self.override = override
        self._connect = connect
        self._http = http
        self._vocabs = vocabs
        self._stats = stats
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
                logger.info("context window of %s: %d tokens (%s)", self.name, self._window, self.source)
            return self._window

    def _resolve(self) -> tuple[int, str]:
        where = self._connect()
        self._tokenizer = self._pick_tokenizer(where)
        reported = where.known_window
        if reported is None:
            reported = discover_window(self._http, self.kind, where.base_url, where.model, where.api_key)
        if reported is not None and self.override is not None:
            return (min(reported, self.override),
                    "--max_context" if self.override <= reported else "reported by the server")
        if reported is not None:
            return reported, "reported by the server"
        if self.override is not None:
            return self.override, "--max_context"
        return default_window(self.kind, where.model), f"default for {self.kind} engines"

    def _pick_tokenizer(self, where: Connection) -> Tokenizer | None:
        """The backend's exact counter (backends.Backend.tokenizer); the server's tokenize route where the
        model's vocabulary cannot be loaded here; None where there is nothing to ask."""
        source = self._route.backend.tokenizer
        if source == "vocab" and where.model_file is not None:
            vocab = self._vocabs.tokenizer(where.model_file)
            if vocab is not None:
                self._local_tokenizer = True
                return vocab
        if source == "tiktoken":
            return TiktokenTokenizer(where.model)
        routes = self._route.backend.tokenize_routes
        return ServerTokenizer(self._http, where.base_url, where.model, where.api_key, routes) if routes else None

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

    # -- fitting and overflow replies -------------------------------------------------------

    def fit_reply(self, messages: list[dict[str, Any]], max_tokens: int) -> int:
        """max_tokens lowered so that prompt + reply fit the window; ContextOverflowError if nothing fits."""
        window = self.window
        if self._was_rejected(messages, max_tokens):
            raise ContextOverflowError(f"{self.name}: this exact request was already rejected as too long for "
                                       f"the {window}-token context window", window=window)
        prompt_tokens = self.messages(messages)
        if prompt_tokens + max_tokens <= window:
            return max_tokens
        prompt_tokens = self.messages(messages, exact=True)
        room = window - prompt_tokens
        if room >= max_tokens:
            return max_tokens
        if room >= min(max_tokens, MIN_REPLY_TOKENS):
            self._stats.add(context_shortened=1)
            return room
        raise ContextOverflowError(f"{self.name}: a prompt of {prompt_tokens} tokens leaves no room for a reply in "
                                   f"the {window}-token context window", window=window, prompt_tokens=prompt_tokens)

    @staticmethod
    def _fingerprint(messages: list[dict[str, Any]], max_tokens: int) -> str:
        return json.dumps([messages, max_tokens], sort_keys=True, ensure_ascii=False)

    def _was_rejected(self, messages: list[dict[str, Any]], max_tokens: int) -> bool:
        with self._lock:
            return self._fingerprint(messages, max_tokens) in self._rejected

    def overflow(self, messages: list[dict[str, Any]], max_tokens: int, body: Any) -> ContextOverflowError:
        """The server rejected this request for its length: remember it (it is never sent again), learn the
        window and the count the reply states, and word the error."""
        self._stats.add(context_overflows=1)
        stated_window, stated_prompt = overflow_sizes(body)
        prompt_tokens = stated_prompt if stated_prompt is not None else self.messages(messages)
        with self._lock:
            self._rejected[self._fingerprint(messages, max_tokens)] = None
            if len(self._rejected) > REJECTED_REMEMBERED:
                self._rejected.popitem(last=False)
        if stated_prompt is not None:
            self.calibrate(messages, stated_prompt)
        if stated_window is not None:
            self.shrink_to(stated_window, "stated by an overflow reply")
        window = stated_window or self.window
        logger.info("%s: the server rejected a request of ~%d prompt + %d reply tokens for its context (%s)",
                    self.name, prompt_tokens, max_tokens, f"window {stated_window}" if stated_window else
                    "window not stated")
        return ContextOverflowError(f"{self.name}: {prompt_tokens} prompt tokens + {max_tokens} reply tokens exceed "
                                    f"the {window}-token context window", window=window,
                                    prompt_tokens=prompt_tokens)
