"""Chat engines: one OpenAI-compatible client per backend, with retries, a cache and a cap.

Every backend in the spec (embedded llama.cpp, Ollama, vLLM, SGLang, OpenAI)
speaks the OpenAI chat API, so one class covers them all; only the URL, the key
and the model id differ, and those come from the engine name plus environment
variables (see ``_route``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

from textgrad import context, interrupt
from textgrad.cache import ResponseCache
from textgrad.engine_names import canonical_engine_name
from textgrad.slots import EndpointSlots

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENCY = 16
# Long on purpose: the embedded server answers one request at a time, so a request
# may queue behind max_concurrency others before its first token.
DEFAULT_REQUEST_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A server that refuses connections is down, not busy: stop retrying well inside 30 s.
CONNECTION_RETRY_BUDGET_S = 20.0
CHECK_TIMEOUT_S = 10.0
# The engine lowers max_tokens to fit the window, but not below this: a shorter reply is rarely usable.
MIN_REPLY_TOKENS = 16
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class EngineError(RuntimeError):
    """A failure the user can fix (server down, key missing or rejected); one line, no key in it."""


class ContextOverflowError(EngineError):
    """A request too long for the model's context window: rejected by the server or known not to fit.

    Never retried unchanged: callers shorten the request once (textgrad.budget) or skip the item.
    """

    def __init__(self, message: str, *, window: int | None = None, prompt_tokens: int | None = None) -> None:
        super().__init__(message)
        self.window = window
        self.prompt_tokens = prompt_tokens


# ---------------------------------------------------------------- statistics


@dataclass
class EngineStats:
    """Per-engine counters, updated from many threads."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    retries: int = 0
    failures: int = 0
    context_overflows: int = 0  # overflow replies from the server (HTTP 400 naming the context)
    context_shortened: int = 0  # requests cut down to fit the window before they were sent
    context_skipped: int = 0    # calls given up because not even the shortest version fits
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    _COUNTERS = ("calls", "prompt_tokens", "completion_tokens", "cache_hits",
                 "cache_misses", "retries", "failures", "context_overflows", "context_shortened",
                 "context_skipped")

    def add(self, **deltas: int) -> None:
        self._bump(deltas)
        for meter in _meters.get():
            meter._bump(deltas)

    def _bump(self, deltas: dict[str, int]) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in self._COUNTERS}


# The meters of the current context (see metered()): every counter update also lands in each of them.
_meters: contextvars.ContextVar[tuple[EngineStats, ...]] = contextvars.ContextVar("fedtextgrad_meters",
                                                                                  default=())


@contextlib.contextmanager
def metered() -> Iterator[EngineStats]:
    """Counters of the calls made inside the block, by any engine, also from the threads it starts
    through textgrad.parallel: the cost of one phase of a run while other phases run beside it."""
    meter = EngineStats()
    token = _meters.set((*_meters.get(), meter))
    try:
        yield meter
    finally:
        _meters.reset(token)


# ---------------------------------------------------------------- process-wide settings


@dataclass
class _Settings:
    cache_dir: str | None = None  # None: FEDTEXTGRAD_CACHE_DIR or ~/.cache/fedtextgrad
    use_cache: bool = True
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S
    max_context: int | None = None  # None: ask the server, else a default per kind of engine


_settings = _Settings()
_UNSET: Any = object()


def configure(
    *,
    cache_dir: str | None = _UNSET,
    use_cache: bool = _UNSET,
    max_concurrency: int = _UNSET,
    request_timeout: float = _UNSET,
    max_context: int | None = _UNSET,
) -> None:
    """Set the defaults that get_engine uses for arguments left as None.

    Only the arguments given change; ``cache_dir=None`` goes back to the default
    location. Engines already created keep their settings.
    """
    if cache_dir is not _UNSET:
        _settings.cache_dir = None if cache_dir is None else str(cache_dir)
    if use_cache is not _UNSET:
        _settings.use_cache = bool(use_cache)
    if max_concurrency is not _UNSET:
        if int(max_concurrency) < 1:
            raise ValueError("max_concurrency must be at least 1")
        _settings.max_concurrency = int(max_concurrency)
    if request_timeout is not _UNSET:
        if float(request_timeout) <= 0:
            raise ValueError("request_timeout must be positive")
        _settings.request_timeout = float(request_timeout)
    if max_context is not _UNSET:
        if max_context is not None and int(max_context) < context.MIN_PLAUSIBLE_WINDOW:
            raise ValueError(f"max_context must be at least {context.MIN_PLAUSIBLE_WINDOW} tokens")
        _settings.max_context = None if max_context is None else int(max_context)


def default_cache_dir() -> str:
    if _settings.cache_dir:
        return str(Path(_settings.cache_dir).expanduser().resolve())
    env = os.environ.get("FEDTEXTGRAD_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "fedtextgrad"
    return str(base.expanduser().resolve())


# ---------------------------------------------------------------- routing


@dataclass(frozen=True)
class _Route:
    kind: str             # "local", "ollama", "vllm", "sglang", "openai" (used in messages)
    model: str | None     # None: ask the server's /models listing
    base_url: str | None  # None: start the embedded llama.cpp server
    env_var: str          # the variable that sets the URL
    key_env: str | None   # the variable that holds the key
    api_key: str = field(repr=False, default="")


# prefix -> (kind, URL variable, default URL, key variable, placeholder key). Self-hosted
# servers usually accept any key, but the SDK insists on a non-empty one.
_PREFIXES = {
    "ollama-": ("ollama", "OLLAMA_BASE_URL", "http://localhost:11434/v1", "OLLAMA_API_KEY", "ollama"),
    "vllm-": ("vllm", "VLLM_BASE_URL", "http://localhost:8000/v1", "VLLM_API_KEY", "EMPTY"),
    "sglang-": ("sglang", "SGLANG_BASE_URL", "http://localhost:30000/v1", "SGLANG_API_KEY", "EMPTY"),
}


def _clean_url(url: str) -> str:
    return url.strip().rstrip("/")


def _route(name: str) -> _Route:
    if not name or not name.strip():
        raise EngineError("empty engine name: use `local`, `ollama-<model>`, `vllm-<model>`, "
                          "`sglang-<model>` or an OpenAI model such as `gpt-4o`")
    if name == "local":
        url = os.environ.get("LOCAL_BASE_URL")
        return _Route("local", None, _clean_url(url) if url else None, "LOCAL_BASE_URL",
                      "LOCAL_API_KEY", os.environ.get("LOCAL_API_KEY") or "local")
    for prefix, (kind, url_env, default_url, key_env, placeholder) in _PREFIXES.items():
        if name.startswith(prefix):
            model = name[len(prefix):].strip()
            if not model:
                raise EngineError(f"engine `{name}` names no model: write it as `{prefix}<model>`, "
                                  f"e.g. `{prefix}llama3.1`")
            url = _clean_url(os.environ.get(url_env) or default_url)
            return _Route(kind, model, url, url_env, key_env, os.environ.get(key_env) or placeholder)
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise EngineError("OPENAI_API_KEY is not set: export it, or choose a local engine "
                          "(--evaluation_engine local)")
    url = _clean_url(os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL)
    return _Route("openai", name.strip(), url, "OPENAI_BASE_URL", "OPENAI_API_KEY", key)


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _fetch_models(base_url: str, api_key: str, timeout: float) -> list[str]:
    """Model ids from GET {base_url}/models; raises urllib errors for the caller to word."""
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    handlers = [urllib.request.ProxyHandler({})] if _is_loopback(base_url) else []
    with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
        payload = json.loads(response.read().decode("utf-8"))
    return [str(item.get("id")) for item in payload.get("data", []) if isinstance(item, dict)]


# ---------------------------------------------------------------- per-endpoint cap

_semaphores: dict[str, EndpointSlots] = {}
_semaphores_lock = threading.Lock()


def _endpoint_semaphore(base_url: str, size: int) -> EndpointSlots:
    # Shared by every engine on the URL: a vLLM server used as both test and evaluation
    # engine must see at most `size` requests from us, not `size` per engine.
    with _semaphores_lock:
        semaphore = _semaphores.get(base_url)
        if semaphore is None:
            semaphore = _semaphores[base_url] = EndpointSlots(size)
        elif semaphore.size != size:
            logger.warning("endpoint %s already capped at %s concurrent requests; keeping that cap",
                           base_url, semaphore.size)
        return semaphore


# ---------------------------------------------------------------- the engine


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # None content happens when callers pass through an empty previous reply; the
    # servers reject null, and the cache key must not depend on None-vs-"".
    return [{"role": m.get("role") or "user", "content": "" if m.get("content") is None else m["content"]}
            for m in messages]


def _estimate_tokens(text: str) -> int:
    return len(text) // 4


class ChatEngine:
    """A chat model behind an OpenAI-compatible endpoint.

    The connection is set up on first use, so creating the default "local" engine
    does not start the llama.cpp server until something actually needs it.
    """

    def __init__(self, name: str, route: _Route, *, cache: ResponseCache | None,
                 max_concurrency: int, request_timeout: float, max_context: int | None = None) -> None:
        self.name = name
        self.env_var = route.env_var
        self.stats = EngineStats()
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self._route = route
        self._model = route.model
        self._base_url = route.base_url
        self._client: openai.OpenAI | None = None
        self._semaphore: EndpointSlots | None = None
        self._setup_lock = threading.Lock()
        self.context = context.EngineContext(route.kind, route.model or name, max_context, self._connection)

    def __repr__(self) -> str:
        # Deliberately without the key (and without forcing the lazy set-up).
        return f"ChatEngine(name={self.name!r}, model={self._model!r}, base_url={self._base_url!r})"

    # -- lazy connection ------------------------------------------------------

    @property
    def base_url(self) -> str:
        self._ensure_ready()
        assert self._base_url is not None
        return self._base_url

    @property
    def model(self) -> str:
        self._ensure_ready()
        assert self._model is not None
        return self._model

    def _ensure_ready(self) -> openai.OpenAI:
        with self._setup_lock:
            if self._client is not None:
                return self._client
            if self._base_url is None:
                from textgrad import local_server  # lazy: it imports EngineError from here

                self._base_url = local_server.ensure_local_server()
            if self._model is None:
                self._model = self._discover_model()
            # Loopback servers must never go through a proxy from the environment.
            http_client = httpx.Client(trust_env=False) if _is_loopback(self._base_url) else None
            self._client = openai.OpenAI(
                base_url=self._base_url,
                api_key=self._route.api_key,
                max_retries=0,  # our own loop below counts and bounds retries
                timeout=httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT_S),
                http_client=http_client,
            )
            self._semaphore = _endpoint_semaphore(self._base_url, self.max_concurrency)
            return self._client

    def request_slot(self) -> EndpointSlots:
        """The endpoint's concurrency cap, to hold around requests made outside chat() (log-probabilities)."""
        self._ensure_ready()
        assert self._semaphore is not None
        return self._semaphore

    def _connection(self) -> tuple[str, str, str, str | None]:
        """(base URL, model, key, GGUF path if this is the embedded server) for EngineContext."""
        self._ensure_ready()
        embedded = None
        if self._route.kind == "local" and self._route.base_url is None:
            from textgrad import local_server

            info = local_server.local_server_info()
            embedded = str(info["model_path"]) if info else None
        return self.base_url, self.model, self._route.api_key, embedded

    # -- the context window ---------------------------------------------------------

    @property
    def context_window(self) -> int:
        """Tokens a request may use, prompt and reply together (see textgrad.context.EngineContext)."""
        return self.context.window

    def count_tokens(self, text: str) -> int:
        """Tokens of text by the server's tokenizer where it offers one, else a conservative estimate."""
        return self.context.count(text)

    def estimate_tokens(self, text: str) -> int:
        """A cheap upper bound of count_tokens (no request to the server)."""
        return self.context.estimate(text)

    def _fit_reply(self, messages: list[dict[str, Any]], max_tokens: int) -> int:
        """max_tokens lowered so that prompt + reply fit the window; ContextOverflowError if nothing fits.

        Requests built by textgrad.budget already fit; this guards every other caller.
        """
        window = self.context_window
        if self.context.was_rejected(messages, max_tokens):
            raise ContextOverflowError(f"{self.name}: this exact request was already rejected as too long for "
                                       f"the {window}-token context window", window=window)
        prompt_tokens = self.context.messages(messages)
        if prompt_tokens + max_tokens <= window:
            return max_tokens
        prompt_tokens = self.context.messages(messages, exact=True)
        room = window - prompt_tokens
        if room >= max_tokens:
            return max_tokens
        if room >= min(max_tokens, MIN_REPLY_TOKENS):
            self.stats.add(context_shortened=1)
            return room
        raise ContextOverflowError(f"{self.name}: a prompt of {prompt_tokens} tokens leaves no room for a reply in "
                                   f"the {window}-token context window", window=window, prompt_tokens=prompt_tokens)

    def _overflow(self, exc: openai.APIStatusError, messages: list[dict[str, Any]],
                  max_tokens: int) -> ContextOverflowError:
        self.stats.add(context_overflows=1)
        stated_window, prompt_tokens = self.context.rejected(messages, max_tokens, exc.body)
        window = stated_window or self.context_window
        logger.info("%s: the server rejected a request of ~%d prompt + %d reply tokens for its context (%s)",
                    self.name, prompt_tokens, max_tokens, f"window {stated_window}" if stated_window else
                    "window not stated")
        return ContextOverflowError(f"{self.name}: {prompt_tokens} prompt tokens + {max_tokens} reply tokens exceed "
                                    f"the {window}-token context window", window=window,
                                    prompt_tokens=prompt_tokens)

    def _discover_model(self) -> str:
        assert self._base_url is not None
        try:
            models = _fetch_models(self._base_url, self._route.api_key, CHECK_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise self._unreachable(_one_line(str(getattr(exc, "reason", exc)))) from None
        if not models:
            raise EngineError(f"the {self._route.kind} endpoint at {self._base_url} lists no model")
        return models[0]

    # -- messages ---------------------------------------------------------------

    def _unreachable(self, reason: str = "") -> EngineError:
        if self._route.kind == "local" and self._route.base_url is None:
            fix = "the embedded llama.cpp server stopped; rerun, or set LOCAL_BASE_URL to a running server"
        else:
            fix = f"start the server or set {self.env_var}"
        detail = f" ({self._redact(reason)})" if reason else ""
        return EngineError(f"cannot reach the {self._route.kind} endpoint at {self._base_url}{detail}: {fix}")

    def _redact(self, text: str) -> str:
        key = self._route.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _status_error(self, exc: openai.APIStatusError) -> EngineError:
        body = exc.body
        if isinstance(body, dict):
            detail = body.get("error", body)
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
        else:
            message = exc.message
        message = self._redact(_one_line(str(message)))
        prefix = f"{self.name} request to {self._base_url} failed with HTTP {exc.status_code}"
        if exc.status_code in (401, 403) and self._route.key_env:
            return EngineError(f"{prefix}: the API key was rejected; check {self._route.key_env} ({message})")
        if exc.status_code == 404:
            return EngineError(f"{prefix}: {message} (is `{self._model}` served there?)")
        return EngineError(f"{prefix}: {message}")

    # -- public API -------------------------------------------------------------

    def generate(self, prompt: str, system_prompt: str | None = None, *,
                 temperature: float = 0.0, max_tokens: int = 512) -> str:
        """Answer one user prompt, optionally under a system prompt."""
        messages: list[dict[str, Any]] = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": prompt})
        return self.chat(messages, temperature=temperature, max_tokens=max_tokens)

    __call__ = generate

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0, max_tokens: int = 512) -> str:
        """Send a chat and return the reply text ("" when the model says nothing)."""
        self._ensure_ready()
        messages = _normalise_messages(messages)
        max_tokens = self._fit_reply(messages, int(max_tokens))
        key = None
        if self.cache is not None:
            # Looked up before the semaphore: a hit must never wait behind real requests.
            key = ResponseCache.make_key(self.model, messages,
                                         {"temperature": float(temperature), "max_tokens": int(max_tokens)})
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                self.stats.add(cache_hits=1)
                return hit["text"]
            self.stats.add(cache_misses=1)

        text, prompt_tokens, completion_tokens = self._request(messages, temperature, max_tokens)
        self.stats.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.context.answered(prompt_tokens, max_tokens)
        if self.cache is not None and key is not None:
            try:
                self.cache.put(key, {"model": self.model, "text": text, "prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens})
            except OSError as exc:
                # A full or read-only disk must not fail an experiment that already paid for the call.
                logger.warning("could not write the response cache in %s: %s", self.cache.directory, exc)
        return text

    def _request(self, messages: list[dict[str, Any]], temperature: float,
                 max_tokens: int) -> tuple[str, int, int]:
        client = self._ensure_ready()
        assert self._semaphore is not None
        interrupt.check()  # after Ctrl-C no new request
        self.stats.add(calls=1)
        started = time.monotonic()
        delay = BACKOFF_BASE_S
        timeouts = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self._semaphore:
                    # The SDK's generic post, not chat.completions.create: that one converts the typed
                    # request and builds pydantic models of the reply, 2 of the 3 ms of CPU a call cost
                    # (measured with bench/). Errors and timeouts are raised exactly the same way.
                    response = client.post("/chat/completions", cast_to=object, body={
                        "model": self.model, "messages": messages,
                        "temperature": temperature, "max_tokens": max_tokens,
                    })
                return self._parse(response, messages)
            except openai.APIStatusError as exc:
                if context.is_overflow(exc.status_code, exc.body):
                    # Not transient: the same request would fail the same way, so it is never resent.
                    raise self._overflow(exc, messages, max_tokens) from None
                if exc.status_code != 429 and exc.status_code < 500:
                    self.stats.add(failures=1)
                    raise self._status_error(exc) from None
                failure: EngineError = self._status_error(exc)
                wait = max(delay, _retry_after(exc))
            except openai.APIConnectionError as exc:
                read_timeout = isinstance(exc, openai.APITimeoutError) and not isinstance(
                    exc.__cause__, httpx.ConnectTimeout)
                if read_timeout:
                    timeouts += 1
                    failure = EngineError(
                        f"{self.name} request to {self._base_url} timed out after {self.request_timeout:.0f} s "
                        f"({timeouts} times); the server is overloaded or the answer too long")
                    # Retrying a long generation repeats the whole wait: at most three timeouts per call,
                    # whatever transient errors came between them.
                    if timeouts >= 3:
                        break
                else:
                    failure = self._unreachable(_one_line(str(exc.__cause__ or exc)))
                    # A refused connection means "down", not "busy": bound the total wait.
                    if time.monotonic() - started + delay > CONNECTION_RETRY_BUDGET_S:
                        break
                wait = delay
            if attempt == MAX_ATTEMPTS:
                break
            interrupt.check()  # after Ctrl-C: no retry, and no blame on the server
            self.stats.add(retries=1)
            logger.warning("%s: attempt %d failed (%s); retrying in %.1f s", self.name, attempt, failure, wait)
            interrupt.sleep(wait)
            delay = min(delay * 2, BACKOFF_CAP_S)
        interrupt.check()
        self.stats.add(failures=1)
        raise failure

    def _parse(self, response: Any, messages: list[dict[str, Any]]) -> tuple[str, int, int]:
        # The reply's JSON as sent: any part may be missing or of the wrong type on a sloppy server.
        body = response if isinstance(response, dict) else {}
        choices = body.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
        completion_tokens = (usage.get("completion_tokens")
                             if isinstance(usage.get("completion_tokens"), int) else None)
        if prompt_tokens is None:
            prompt_tokens = sum(_estimate_tokens(str(m["content"])) for m in messages)
        else:
            self.context.calibrate(messages, prompt_tokens)
        if completion_tokens is None:
            completion_tokens = _estimate_tokens(text)
        return text, int(prompt_tokens), int(completion_tokens)

    def check_available(self) -> None:
        """Fail fast, with one actionable line, if the endpoint cannot serve requests."""
        self._ensure_ready()  # for "local" this starts the server and waits for it
        assert self._base_url is not None
        reason = ""
        for attempt in range(2):
            try:
                _fetch_models(self._base_url, self._route.api_key, CHECK_TIMEOUT_S)
                return
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403) and self._route.key_env:
                    raise EngineError(f"the {self._route.kind} endpoint at {self._base_url} rejected the "
                                      f"API key (HTTP {exc.code}): check {self._route.key_env}") from None
                return  # it answered; some servers simply do not implement /models
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = _one_line(str(getattr(exc, "reason", exc)))
                if attempt == 0:
                    time.sleep(1.0)
        raise self._unreachable(reason)


def _retry_after(exc: openai.APIStatusError) -> float:
    try:
        value = float(exc.response.headers.get("retry-after", 0))
    except (TypeError, ValueError, AttributeError):
        return 0.0
    return min(max(value, 0.0), BACKOFF_CAP_S)


# ---------------------------------------------------------------- registry

_engines: dict[tuple[str, str, bool, int | None], ChatEngine] = {}
_engines_lock = threading.Lock()


def get_engine(engine_name: str, *, cache_dir: str | None = None, use_cache: bool | None = None,
               max_concurrency: int | None = None) -> ChatEngine:
    """The engine for `name`, created once per (name, cache directory, use_cache, max_context) in a process.

    Routing and key problems raise EngineError here, before any request is made.
    """
    name = canonical_engine_name(engine_name)  # TextGrad's spelling: `experimental:gpt-4o` is `gpt-4o`
    use_cache = _settings.use_cache if use_cache is None else use_cache
    directory = str(Path(cache_dir).expanduser().resolve()) if cache_dir else default_cache_dir()
    memo_key = (name, directory, bool(use_cache), _settings.max_context)
    with _engines_lock:
        engine = _engines.get(memo_key)
        if engine is None:
            route = _route(name)
            if route.kind == "local" and route.base_url is None:
                from textgrad import local_server

                # Installed now because get_engine usually runs in the main thread, while
                # the server itself may first be needed from a worker thread.
                local_server.install_signal_handlers()
            engine = ChatEngine(
                name, route,
                cache=ResponseCache(directory) if use_cache else None,
                max_concurrency=max_concurrency or _settings.max_concurrency,
                request_timeout=_settings.request_timeout,
                max_context=_settings.max_context,
            )
            _engines[memo_key] = engine
        return engine


def all_engine_stats() -> dict[str, dict[str, int]]:
    """Counters per engine name, summed over engines of the same name (e.g. two cache dirs)."""
    totals: dict[str, dict[str, int]] = {}
    with _engines_lock:
        engines = list(_engines.values())
    for engine in engines:
        stats = engine.stats.as_dict()
        if engine.name in totals:
            for counter, value in stats.items():
                totals[engine.name][counter] += value
        else:
            totals[engine.name] = stats
    return totals


def engine_context_windows() -> dict[str, dict[str, Any]]:
    """The window of every engine that has resolved one, and where it came from (for results.json)."""
    with _engines_lock:
        engines = list(_engines.values())
    windows: dict[str, dict[str, Any]] = {}
    for engine in engines:
        if engine.context.source:
            windows[engine.name] = {"tokens": engine.context_window, "source": engine.context.source,
                                    "largest_request": engine.context.largest_request}
    return windows
