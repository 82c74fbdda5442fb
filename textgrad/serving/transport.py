"""Requests to one endpoint: connecting (starting the embedded pool, finding the model), sending a chat
under the endpoint's cap to the least busy server of its pool, retrying with backoff on 429/5xx and
timeouts, and wording what fails as one line without the key. Calls, retries and failures are counted
in the engine's stats; what a reply means for the cache or the window is the engine's business.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import openai

from ..errors import EngineError, StructuredOutputRejected
from .backends import Route
from .context import Connection
from .llama_process import N_CTX
from .server_pool import member_of
from .slots import EndpointSlots
from .stats import EngineStats, on_the_wire
from .window import is_overflow

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A server that refuses connections is down, not busy: stop retrying well inside 30 s.
CONNECTION_RETRY_BUDGET_S = 20.0
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ChatReply:
    """A reply's text and why it ended: "stop", "length" (cut at max_tokens), None when the server does not say."""

    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Completion:
    """A chat reply with the token counts the server reported (None where it reported none)."""

    reply: ChatReply
    prompt_tokens: int | None
    completion_tokens: int | None


class OverflowReply(Exception):
    """The server rejected the request for its length; body is its error reply (see EngineContext.overflow)."""

    def __init__(self, body: Any) -> None:
        super().__init__("request too long for the context window")
        self.body = body


def one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names_response_format(status: int, body: Any) -> bool:
    # llama-cpp-python (FastAPI) answers an unknown field shape with 422, the others with 400.
    wording = json.dumps(body).casefold() if body is not None else ""
    return status in (400, 422) and any(word in wording for word in
                                        ("response_format", "json_schema", "json_object", "schema", "grammar"))


def _retry_after(exc: openai.APIStatusError) -> float:
    try:
        value = float(exc.response.headers.get("retry-after", 0))
    except (TypeError, ValueError, AttributeError):
        return 0.0
    return min(max(value, 0.0), BACKOFF_CAP_S)


class Transport:
    """One engine's way to its model. Connects on first use, so creating the default "local" engine does
    not start llama.cpp until something needs it."""

    def __init__(self, name: str, route: Route, runtime: Runtime, stats: EngineStats, *,
                 max_concurrency: int, request_timeout: float) -> None:
        self.name = name
        self.route = route
        self.stats = stats
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self._runtime = runtime
        self._model = route.model
        self._base_url = route.base_url
        self._client: openai.OpenAI | None = None
        self._slots: EndpointSlots | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        self.connect()
        assert self._base_url is not None
        return self._base_url

    @property
    def model(self) -> str:
        self.connect()
        assert self._model is not None
        return self._model

    @property
    def slots(self) -> EndpointSlots:
        """The endpoint's concurrency cap, shared by every engine of the runtime that talks to it."""
        self.connect()
        assert self._slots is not None
        return self._slots

    def connect(self) -> openai.OpenAI:
        with self._lock:
            if self._client is not None:
                return self._client
            if self._base_url is None:
                self._base_url = self._runtime.ensure_embedded()
            self._runtime.pools.register_urls(self.route.pool_urls)
            if self._model is None:
                self._model = self._discover_model()
            self._client = openai.OpenAI(
                base_url=self._base_url,
                api_key=self.route.api_key,
                max_retries=0,  # our own loop below counts and bounds retries
                timeout=httpx.Timeout(self.request_timeout, connect=CONNECT_TIMEOUT_S),
                http_client=self._runtime.http.client(self._base_url),  # the server's one pooled client
            )
            self._slots = self._runtime.caps.for_endpoint(self._base_url, self.max_concurrency)
            return self._client

    def connection(self) -> Connection:
        """Where the model is (after starting the embedded pool), for the engine's EngineContext."""
        self.connect()
        model_file = None
        if self.route.embedded:
            info = self._runtime.embedded.info()
            model_file = str(info["model_path"]) if info else None
        elif self.route.kind == "local":
            model_file = self._runtime.embedded.served_model_path(self.base_url, self.model)
        known_window = N_CTX if self.route.embedded and model_file is not None else None
        return Connection(self.base_url, self.model, self.route.api_key, known_window, model_file)

    def endpoint_id(self) -> str:
        """Which server answers, as the response cache keys it: two servers may serve one model name
        with different weights, so a reply of one must never be served as the other's. The embedded
        server listens on a new port every run, so it is named by its model file instead."""
        self.connect()
        if self.route.embedded:
            info = self._runtime.embedded.info()
            return f"embedded:{info['model_path']}" if info else "embedded"
        return self.base_url

    def _discover_model(self) -> str:
        assert self._base_url is not None
        try:
            models = self._runtime.http.fetch_models(self._base_url, self.route.api_key, CHECK_TIMEOUT_S)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as exc:
            raise self._unreachable(one_line(str(exc))) from None
        if not models:
            raise EngineError(f"the {self.route.kind} endpoint at {self._base_url} lists no model")
        return models[0]

    # -- sending -------------------------------------------------------------------------------

    def send(self, messages: list[dict[str, Any]], sampling: dict[str, Any],
             response_format: dict[str, Any] | None = None) -> Completion:
        """One chat completion with these sampling parameters (temperature, max_tokens, top_p), retried on
        what is transient. OverflowReply when the server says the request is too long (never resent),
        StructuredOutputRejected when it refuses response_format."""
        client = self.connect()
        stop = self._runtime.stop
        stop.check()  # after Ctrl-C no new request
        self.stats.add(calls=1)
        started = time.monotonic()
        delay = BACKOFF_BASE_S
        timeouts = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                # A pool of servers is one endpoint for the cap; the least busy server answers.
                with self.slots, member_of(self._runtime.pool_of(self.base_url), self.base_url) as server_url, \
                        on_the_wire():
                    # The SDK's generic post, not chat.completions.create: that one converts the typed
                    # request and builds pydantic models of the reply, 2 of the 3 ms of CPU a call cost
                    # (measured with bench/). Errors and timeouts are raised exactly the same way.
                    body = {"model": self.model, "messages": messages, **sampling}
                    if response_format is not None:
                        body["response_format"] = response_format
                    response = client.post(f"{server_url}/chat/completions", cast_to=object, body=body)
                return _parse(response)
            except openai.APIStatusError as exc:
                if is_overflow(exc.status_code, exc.body):
                    # Not transient: the same request would fail the same way, so it is never resent.
                    raise OverflowReply(exc.body) from None
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
                    failure = self._unreachable(one_line(str(exc.__cause__ or exc)))
                    # A refused connection means "down", not "busy": bound the total wait.
                    if time.monotonic() - started + delay > CONNECTION_RETRY_BUDGET_S:
                        break
                wait = delay
            if attempt == MAX_ATTEMPTS:
                break
            stop.check()  # after Ctrl-C: no retry, and no blame on the server
            self.stats.add(retries=1)
            logger.warning("%s: attempt %d failed (%s); retrying in %.1f s", self.name, attempt, failure, wait)
            stop.sleep(wait)
            delay = min(delay * 2, BACKOFF_CAP_S)
        stop.check()
        self.stats.add(failures=1)
        raise failure

    def echo(self, prompt: str) -> dict[str, Any]:
        """POST /completions echoing prompt with its log-probabilities (one token generated), under the
        endpoint's cap like every chat call: measurements run beside validation requests. May raise."""
        with self.slots, member_of(self._runtime.pool_of(self.base_url), self.base_url) as server_url, \
                on_the_wire("logprob"):
            response = self._runtime.http.client(self.base_url).post(
                f"{server_url}/completions", headers={"Authorization": f"Bearer {self.route.api_key}"},
                timeout=self.request_timeout, json={"model": self.model, "prompt": prompt, "max_tokens": 1,
                                                    "temperature": 0.0, "echo": True, "logprobs": 1})
        response.raise_for_status()
        return response.json()

    def check_available(self) -> None:
        """Fail fast, with one actionable line, if the endpoint cannot serve requests."""
        self.connect()  # for "local" this starts the server and waits for it
        reason = ""
        for attempt in range(2):
            try:
                self._runtime.http.fetch_models(self.base_url, self.route.api_key, CHECK_TIMEOUT_S)
                return
            except httpx.HTTPStatusError as exc:
                code = exc.response.status_code
                if code in (401, 403) and self.route.key_env:
                    raise EngineError(f"the {self.route.kind} endpoint at {self.base_url} rejected the "
                                      f"API key (HTTP {code}): check {self.route.key_env}") from None
                return  # it answered; some servers simply do not implement /models
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, AttributeError) as exc:
                reason = one_line(str(exc))
                if attempt == 0:
                    time.sleep(1.0)
        raise self._unreachable(reason)

    # -- wording failures ----------------------------------------------------------------------

    def _unreachable(self, reason: str = "") -> EngineError:
        if self.route.embedded:
            fix = "the embedded llama.cpp server stopped; rerun, or set LOCAL_BASE_URL to a running server"
        else:
            fix = f"start the server or set {self.route.env_var}"
        detail = f" ({self._redact(reason)})" if reason else ""
        return EngineError(f"cannot reach the {self.route.kind} endpoint at {self._base_url}{detail}: {fix}")

    def _redact(self, text: str) -> str:
        key = self.route.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _status_error(self, exc: openai.APIStatusError) -> EngineError:
        body = exc.body
        if isinstance(body, dict):
            detail = body.get("error", body)
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
        else:
            message = exc.message
        message = self._redact(one_line(str(message)))
        prefix = f"{self.name} request to {self._base_url} failed with HTTP {exc.status_code}"
        if exc.status_code in (401, 403) and self.route.key_env:
            return EngineError(f"{prefix}: the API key was rejected; check {self.route.key_env} ({message})")
        if exc.status_code == 404:
            return EngineError(f"{prefix}: {message} (is `{self._model}` served there?)")
        return EngineError(f"{prefix}: {message}")


def _parse(response: Any) -> Completion:
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
    completion_tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None
    return Completion(ChatReply(text, finish_reason), prompt_tokens, completion_tokens)
