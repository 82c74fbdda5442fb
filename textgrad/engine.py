"""Chat engines: one OpenAI-compatible client per backend, with retries, a cache and a cap.

Every backend in the spec (embedded llama.cpp, Ollama, vLLM, SGLang, OpenAI)
speaks the OpenAI chat API, so one class covers them all; only the URL, the key
and the model id differ, and those come from the engine name plus environment
variables (see ``textgrad.endpoints.route``). What a backend can do beyond chat
(prompt log-probabilities, structured output, its window and tokenizer) is in
``textgrad.endpoints.Backend``; errors live in ``textgrad.errors``, counters in
``textgrad.stats`` (all re-exported here for callers that import them from this module).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai

from . import context, endpoints, interrupt, local_server, server_pool
from .cache import ResponseCache
from .endpoints import Route, canonical_engine_name, endpoint_slots, fetch_models, http_client
from .errors import ContextOverflowError, EngineError, StructuredOutputRejected
from .settings import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_REQUEST_TIMEOUT_S,
    configure,
    default_cache_dir,
    defaults,
)
from .slots import EndpointSlots
from .stats import EngineStats, metered
from .tokenizers import TokenCount, bos_token

__all__ = ["DEFAULT_MAX_CONCURRENCY", "DEFAULT_REQUEST_TIMEOUT_S", "ChatEngine", "ContextOverflowError", "EngineError",
           "EngineStats", "TokenCount", "all_engine_stats", "configure", "default_cache_dir", "engine_context_windows",
           "get_engine", "metered"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A server that refuses connections is down, not busy: stop retrying well inside 30 s.
CONNECTION_RETRY_BUDGET_S = 20.0
CHECK_TIMEOUT_S = 10.0
# The engine lowers max_tokens to fit the window, but not below this: a shorter reply is rarely usable.
MIN_REPLY_TOKENS = 16


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


@dataclass(frozen=True)
class ChatReply:
    """A reply's text and why it ended: "stop", "length" (cut at max_tokens), None when the server does not say."""

    text: str
    finish_reason: str | None = None


def _names_response_format(status: int, body: Any) -> bool:
    # llama-cpp-python (FastAPI) answers an unknown field shape with 422, the others with 400.
    wording = json.dumps(body).casefold() if body is not None else ""
    return status in (400, 422) and any(word in wording for word in
                                        ("response_format", "json_schema", "json_object", "schema", "grammar"))


class ChatEngine:
    """A chat model behind an OpenAI-compatible endpoint.

    The connection is set up on first use, so creating the default "local" engine
    does not start the llama.cpp server until something actually needs it.
    """

    def __init__(self, name: str, route: Route, *, cache: ResponseCache | None,
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
        self.context = context.EngineContext(route, route.model or name, max_context, self._connection)

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

    @property
    def cache_endpoint(self) -> str:
        """Which server answers, as the response cache keys it: two servers may serve one model name
        with different weights, so a reply of one must never be served as the other's. The embedded
        server listens on a new port every run, so it is named by its model file instead."""
        self._ensure_ready()
        if self._route.embedded:
            info = local_server.local_server_info()
            return f"embedded:{info['model_path']}" if info else "embedded"
        assert self._base_url is not None
        return self._base_url

    def _ensure_ready(self) -> openai.OpenAI:
        with self._setup_lock:
            if self._client is not None:
                return self._client
            if self._base_url is None:
                self._base_url = local_server.ensure_local_server()
            server_pool.register_urls(self._route.pool_urls)
            if self._model is None:
                self._model = self._discover_model()
            self._client = openai.OpenAI(
                base_url=self._base_url,
                api_key=self._route.api_key,
                max_retries=0,  # our own loop below counts and bounds retries
                timeout=httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT_S),
                http_client=http_client(self._base_url),  # the server's one pooled client
            )
            self._semaphore = endpoint_slots(self._base_url, self.max_concurrency)
            return self._client

    def request_slot(self) -> EndpointSlots:
        """The endpoint's concurrency cap, to hold around requests made outside chat() (log-probabilities)."""
        self._ensure_ready()
        assert self._semaphore is not None
        return self._semaphore

    def _connection(self) -> context.Connection:
        """Where the model is, for EngineContext (after starting the embedded server)."""
        self._ensure_ready()
        model_file = None
        if self._route.embedded:
            info = local_server.local_server_info()
            model_file = str(info["model_path"]) if info else None
        elif self._route.kind == "local":
            model_file = local_server.served_model_path(self.base_url, self.model)
        return context.Connection(self.base_url, self.model, self._route.api_key,
                                  embedded=self._route.embedded and model_file is not None, model_file=model_file)

    # -- the context window ---------------------------------------------------------

    @property
    def context_window(self) -> int:
        """Tokens a request may use, prompt and reply together (see textgrad.context.EngineContext)."""
        return self.context.window

    def count_tokens(self, text: str) -> int:
        """Tokens of text by the model's tokenizer where one is reachable, else a conservative estimate."""
        return self.context.count(text)

    def token_count(self, text: str) -> TokenCount:
        """count_tokens(text) with whether it is exact: the project's one token counter (prompt lengths too).

        Exact from the embedded model's vocabulary, a server's /tokenize, or tiktoken for OpenAI models;
        an estimate (exact=False) where none of them answers."""
        return self.context.token_count(text)

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
            models = fetch_models(self._base_url, self._route.api_key, CHECK_TIMEOUT_S)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as exc:
            raise self._unreachable(_one_line(str(exc))) from None
        if not models:
            raise EngineError(f"the {self._route.kind} endpoint at {self._base_url} lists no model")
        return models[0]

    # -- messages ---------------------------------------------------------------

    def _unreachable(self, reason: str = "") -> EngineError:
        if self._route.embedded:
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

    def chat(self, messages: list[dict[str, Any]], *, temperature: float = 0.0, max_tokens: int = 512,
             response_format: dict[str, Any] | None = None) -> str:
        """Send a chat and return the reply text ("" when the model says nothing)."""
        return self.chat_reply(messages, temperature=temperature, max_tokens=max_tokens,
                               response_format=response_format).text

    def chat_reply(self, messages: list[dict[str, Any]], *, temperature: float = 0.0, max_tokens: int = 512,
                   response_format: dict[str, Any] | None = None) -> ChatReply:
        """chat, with the reply's finish_reason; response_format (textgrad.structured) goes to the server
        as given. StructuredOutputRejected when the server refuses it."""
        self._ensure_ready()
        messages = _normalise_messages(messages)
        max_tokens = self._fit_reply(messages, int(max_tokens))
        key = None
        if self.cache is not None:
            # Looked up before the semaphore: a hit must never wait behind real requests.
            params: dict[str, Any] = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
            if response_format is not None:  # absent otherwise, so earlier cache entries stay valid
                params["response_format"] = response_format
            key = ResponseCache.make_key(self.model, messages, params, endpoint=self.cache_endpoint)
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                self.stats.add(cache_hits=1)
                return ChatReply(hit["text"], hit.get("finish_reason"))
            self.stats.add(cache_misses=1)

        text, prompt_tokens, completion_tokens, finish_reason = self._request(messages, temperature, max_tokens,
                                                                              response_format)
        self.stats.add(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        self.context.answered(prompt_tokens, max_tokens)
        if self.cache is not None and key is not None:
            try:
                self.cache.put(key, {"model": self.model, "text": text, "prompt_tokens": prompt_tokens,
                                     "completion_tokens": completion_tokens, "finish_reason": finish_reason})
            except OSError as exc:
                # A full or read-only disk must not fail an experiment that already paid for the call.
                logger.warning("could not write the response cache in %s: %s", self.cache.directory, exc)
        return ChatReply(text, finish_reason)

    def _request(self, messages: list[dict[str, Any]], temperature: float, max_tokens: int,
                 response_format: dict[str, Any] | None = None) -> tuple[str, int, int, str | None]:
        client = self._ensure_ready()
        assert self._semaphore is not None
        interrupt.check()  # after Ctrl-C no new request
        self.stats.add(calls=1)
        started = time.monotonic()
        delay = BACKOFF_BASE_S
        timeouts = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                # A pool of servers is one endpoint for the cap; the least busy server answers.
                with self._semaphore, server_pool.member(self._base_url) as server_url:
                    # The SDK's generic post, not chat.completions.create: that one converts the typed
                    # request and builds pydantic models of the reply, 2 of the 3 ms of CPU a call cost
                    # (measured with bench/). Errors and timeouts are raised exactly the same way.
                    body = {"model": self.model, "messages": messages,
                            "temperature": temperature, "max_tokens": max_tokens}
                    if response_format is not None:
                        body["response_format"] = response_format
                    response = client.post(f"{server_url}/chat/completions", cast_to=object, body=body)
                return self._parse(response, messages)
            except openai.APIStatusError as exc:
                if context.is_overflow(exc.status_code, exc.body):
                    # Not transient: the same request would fail the same way, so it is never resent.
                    raise self._overflow(exc, messages, max_tokens) from None
                if response_format is not None and _names_response_format(exc.status_code, exc.body):
                    raise StructuredOutputRejected(str(self._status_error(exc))) from None
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

    def _parse(self, response: Any, messages: list[dict[str, Any]]) -> tuple[str, int, int, str | None]:
        # The reply's JSON as sent: any part may be missing or of the wrong type on a sloppy server.
        body = response if isinstance(response, dict) else {}
        choices = body.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        finish_reason = first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None
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
        return text, int(prompt_tokens), int(completion_tokens), finish_reason

    def check_available(self) -> None:
        """Fail fast, with one actionable line, if the endpoint cannot serve requests."""
        self._ensure_ready()  # for "local" this starts the server and waits for it
        assert self._base_url is not None
        reason = ""
        for attempt in range(2):
            try:
                fetch_models(self._base_url, self._route.api_key, CHECK_TIMEOUT_S)
                return
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code in (401, 403) and self._route.key_env:
                    raise EngineError(f"the {self._route.kind} endpoint at {self._base_url} rejected the "
                                      f"API key (HTTP {code}): check {self._route.key_env}") from None
                return  # it answered; some servers simply do not implement /models
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as exc:
                reason = _one_line(str(exc))
                if attempt == 0:
                    time.sleep(1.0)
        raise self._unreachable(reason)


    # -- prompt log-probabilities (UID measures) --------------------------------------------

    def prompt_logprobs(self, text: str) -> list[tuple[str, float]] | None:
        """(token, log p(token | the tokens before it)) for every token of text after the first, from the
        server; None where the backend returns no prompt log-probabilities. May raise.

        Kept in the response cache like chat replies and sent under the endpoint's cap, but not counted
        as an LLM call of the run."""
        style = self._route.backend.prompt_logprobs
        if style is None or not text.strip():
            return None
        if style == "echo":
            return self._echo_logprobs(text)
        # llama-cpp-python pairs echoed token i with the log-probabilities computed *after* token i unless
        # the prompt starts with the model's BOS token (which it then strips). So the BOS is put in front
        # explicitly for models that do not add it themselves; that requires knowing which model is served.
        model_path = local_server.served_model_path(self.base_url, self.model)
        bos = bos_token(model_path) if model_path else None
        if bos is None:
            return None
        pairs = self._echo_logprobs(("" if bos.added_by_model else bos.text) + text)
        if not text.endswith("".join(token for token, _ in pairs)):
            return None  # the BOS was not recognised as such: the values would be misaligned
        return pairs

    def _echo_logprobs(self, prompt: str) -> list[tuple[str, float]]:
        """(token, log-probability) of every echoed prompt token that has one (not the first)."""
        key = ResponseCache.make_key(self.model, [{"role": "echo", "content": prompt}], {"logprobs": 1},
                                     endpoint=self.cache_endpoint)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and isinstance(hit.get("logprobs"), list):
            return [(str(token), float(value)) for token, value in hit["logprobs"]]
        # Under the endpoint's cap like every chat call: measurements run beside validation requests.
        with self.request_slot(), server_pool.member(self.base_url) as server_url:
            response = http_client(self.base_url).post(
                f"{server_url}/completions", headers={"Authorization": f"Bearer {self._route.api_key}"},
                timeout=self.request_timeout, json={"model": self.model, "prompt": prompt, "max_tokens": 1,
                                                    "temperature": 0.0, "echo": True, "logprobs": 1})
        response.raise_for_status()
        pairs = _echoed_prompt_logprobs(response.json())
        if self.cache is not None:
            try:
                self.cache.put(key, {"model": self.model, "logprobs": pairs})
            except OSError as exc:
                logger.warning("could not write the response cache in %s: %s", self.cache.directory, exc)
        return pairs


def _echoed_prompt_logprobs(body: dict[str, Any]) -> list[tuple[str, float]]:
    logprobs = body["choices"][0]["logprobs"]
    # The arrays cover the prompt and then the generated token(s): drop the generated ones.
    generated = int((body.get("usage") or {}).get("completion_tokens") or 0)
    pairs = list(zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True))
    return [(token, float(value)) for token, value in pairs[:len(pairs) - generated] if value is not None]


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
    use_cache = defaults.use_cache if use_cache is None else use_cache
    directory = str(Path(cache_dir).expanduser().resolve()) if cache_dir else default_cache_dir()
    memo_key = (name, directory, bool(use_cache), defaults.max_context)
    with _engines_lock:
        engine = _engines.get(memo_key)
        if engine is None:
            route = endpoints.route(name)
            if route.embedded:
                # Installed now because get_engine usually runs in the main thread, while
                # the server itself may first be needed from a worker thread.
                local_server.install_signal_handlers()
            engine = ChatEngine(
                name, route,
                cache=ResponseCache(directory) if use_cache else None,
                max_concurrency=max_concurrency or defaults.max_concurrency,
                request_timeout=defaults.request_timeout,
                max_context=defaults.max_context,
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
