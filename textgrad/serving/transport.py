"""Requests to one endpoint: connecting (starting the embedded pool, finding the model), sending a chat
under the endpoint's cap to the least busy server of its pool, retrying with backoff on 429/5xx,
timeouts and unusable replies, and wording what fails as one line without the key. Calls, retries and
failures are counted in the engine's stats; what a reply means for the cache or the window is the
engine's business.

What a hostile server or proxy may send is a failed attempt, never a crash: each attempt must end within
the request timeout in all (textgrad.serving.http: a deadline, not a limit between bytes); a 200 reply
that is not a chat completion in UTF-8 JSON (an HTML page, invalid bytes, a lone surrogate) is retried and
counted as `invalid_replies`; Retry-After holds off every call to the endpoint, and a call waiting to
retry keeps its slot, so nothing else goes out meanwhile; a reply far longer than its max_tokens is cut
there and marked as cut at the limit ("length"), counted as `overlong_replies`, so no caller trains it
into a prompt.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from ..errors import EngineError, StructuredOutputRejected
from .backends import Route
from .context import Connection
from .http import HttpReply, InvalidReply
from .interrupt import StopFlag
from .llama_process import N_CTX
from .server_pool import member_of
from .slots import EndpointSlots
from .stats import EngineStats, on_the_wire
from .window import is_overflow

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A Retry-After beyond this is taken as this: a server down for longer is better reported than waited on.
RETRY_AFTER_CAP_S = 300.0
# A server that refuses connections is down, not busy: stop retrying well inside 30 s.
CONNECTION_RETRY_BUDGET_S = 20.0
CHECK_TIMEOUT_S = 10.0
# A reply of max_tokens tokens has at most this many characters per token (long words, runs of spaces),
# plus a little: longer, the server ignored the limit.
OVERLONG_CHARS_PER_TOKEN = 16
OVERLONG_SLACK_CHARS = 1024


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


def chat_body(model: str, messages: list[dict[str, Any]], *, temperature: float, max_tokens: int,
              top_p: float | None = None, response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a chat request: exactly what is sent, and (with the endpoint) what the response
    cache keys, so nothing that can change a reply is left out of the key. top_p None is left out (the
    server's default), so entries cached before top_p could be set stay valid."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": float(temperature),
                            "max_tokens": int(max_tokens)}
    if top_p is not None:
        body["top_p"] = float(top_p)
    if response_format is not None:  # absent otherwise, so earlier cache entries stay valid
        body["response_format"] = response_format
    return body


def retry_after(headers: dict[str, str]) -> float:
    """Seconds the server asks us to wait (Retry-After as seconds or an HTTP date), at most
    RETRY_AFTER_CAP_S; 0 when it asks nothing."""
    value = {k.lower(): v for k, v in headers.items()}.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return min(seconds, RETRY_AFTER_CAP_S) if math.isfinite(seconds) and seconds > 0 else 0.0


def overlong_limit(max_tokens: int) -> int:
    """The most characters a reply of max_tokens tokens can plausibly hold."""
    return OVERLONG_CHARS_PER_TOKEN * max_tokens + OVERLONG_SLACK_CHARS


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
        self._connected = False
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

    def connect(self) -> None:
        """Where the endpoint is and which model it serves (the embedded pool started first); once."""
        with self._lock:
            if self._connected:
                return
            if self._base_url is None:
                self._base_url = self._runtime.ensure_embedded()
            self._runtime.pools.register_urls(self.route.pool_urls)
            if self._model is None:
                self._model = self._discover_model()
            self._slots = self._runtime.caps.for_endpoint(self._base_url, self.max_concurrency)
            self._connected = True

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

    def send(self, body: dict[str, Any]) -> Completion:
        """One chat completion of body (chat_body's), retried on what is transient. OverflowReply when the
        server says the request is too long (never resent), StructuredOutputRejected when it refuses
        response_format."""
        self.connect()
        stop = self._runtime.stop
        stop.check()  # after Ctrl-C no new request
        delay = BACKOFF_BASE_S
        timeouts = 0
        # The slot is kept through the backoffs: a call waiting to retry lets no other call out.
        with self.slots:
            stop.check()  # nor one that waited for its slot
            self.stats.add(calls=1)
            started = time.monotonic()
            for attempt in range(1, MAX_ATTEMPTS + 1):
                self._wait_while_held_off(stop)
                try:
                    # A pool of servers is one endpoint for the cap; the least busy server answers.
                    with member_of(self._runtime.pool_of(self.base_url), self.base_url) as server_url, \
                            on_the_wire():
                        reply = self._runtime.http.request("POST", f"{server_url}/chat/completions",
                                                           self.route.api_key, body, timeout=self.request_timeout)
                    if reply.status == 200:
                        return self._completion(reply.body, int(body["max_tokens"]))
                    failure = self._status_failure(reply, body.get("response_format") is not None)
                    wait = delay
                except InvalidReply as exc:
                    self.stats.add(invalid_replies=1)
                    failure = EngineError(f"{self.name} request to {self._base_url} got an unusable reply: {exc}")
                    wait = delay
                except httpx.TimeoutException as exc:
                    if isinstance(exc, httpx.ConnectTimeout):
                        failure = self._unreachable(one_line(str(exc)))
                    else:
                        timeouts += 1
                        failure = EngineError(
                            f"{self.name} request to {self._base_url} got no complete reply within "
                            f"{self.request_timeout:g} s ({timeouts} times; --request_timeout); the server is "
                            "overloaded, stalled or the answer too long")
                        # Retrying a long generation repeats the whole wait: at most three timeouts per call,
                        # whatever transient errors came between them.
                        if timeouts >= 3:
                            break
                    wait = delay
                except httpx.HTTPError as exc:
                    failure = self._unreachable(one_line(str(exc) or type(exc).__name__))
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

    def _wait_while_held_off(self, stop: StopFlag) -> None:
        """Wait out a Retry-After the endpoint gave (this call's, or any other call's)."""
        while (seconds := self.slots.held_for()) > 0:
            stop.sleep(seconds)

    def _status_failure(self, reply: HttpReply, structured: bool) -> EngineError:
        """The error of an attempt the server refused, to retry (429, 5xx); raised at once otherwise."""
        if is_overflow(reply.status, reply.body):
            # Not transient: the same request would fail the same way, so it is never resent.
            raise OverflowReply(reply.body)
        if structured and _names_response_format(reply.status, reply.body):
            raise StructuredOutputRejected(str(self._status_error(reply.status, reply.body)))
        failure = self._status_error(reply.status, reply.body)
        if reply.status != 429 and reply.status < 500:
            self.stats.add(failures=1)
            raise failure
        if reply.status == 429 and (seconds := retry_after(reply.headers)) > 0:
            self.slots.hold_off(seconds)  # every call to this endpoint waits, not only this one
        return failure

    def _completion(self, body: Any, max_tokens: int) -> Completion:
        """The reply of a 200, InvalidReply if it is no chat completion; one far longer than max_tokens is
        cut there and marked as cut at the limit."""
        completion = _parse(body)
        text, limit = completion.reply.text, overlong_limit(max_tokens)
        if len(text) <= limit:
            return completion
        self.stats.add(overlong_replies=1)
        logger.warning("%s: a reply of %d characters for max_tokens %d was cut to %d", self.name, len(text),
                       max_tokens, limit)
        return Completion(ChatReply(text[:limit], "length"), completion.prompt_tokens,
                          min(completion.completion_tokens or max_tokens, max_tokens))

    def echo(self, prompt: str) -> dict[str, Any]:
        """POST /completions echoing prompt with its log-probabilities (one token generated), under the
        endpoint's cap like every chat call: measurements run beside validation requests. May raise."""
        with self.slots, member_of(self._runtime.pool_of(self.base_url), self.base_url) as server_url, \
                on_the_wire("logprob"):
            return self._runtime.http.post_json(
                f"{server_url}/completions", self.route.api_key,
                {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True,
                 "logprobs": 1}, timeout=self.request_timeout)

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

    def _status_error(self, status: int, body: Any) -> EngineError:
        if isinstance(body, dict):
            detail = body.get("error", body)
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
        else:
            message = body or f"HTTP {status}"
        message = self._redact(one_line(str(message)))
        prefix = f"{self.name} request to {self._base_url} failed with HTTP {status}"
        if status in (401, 403) and self.route.key_env:
            return EngineError(f"{prefix}: the API key was rejected; check {self.route.key_env} ({message})")
        if status == 404:
            return EngineError(f"{prefix}: {message} (is `{self._model}` served there?)")
        return EngineError(f"{prefix}: {message}")


def _parse(body: Any) -> Completion:
    """A chat completion's reply; its parts may be missing or of the wrong type on a sloppy server, but
    a body without a choice is no chat completion (a proxy's or another API's answer): InvalidReply."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise InvalidReply("the reply is JSON but no chat completion (it has no choices)")
    first = choices[0]
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    text = content if isinstance(content, str) else ""
    finish_reason = first.get("finish_reason") if isinstance(first.get("finish_reason"), str) else None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None
    completion_tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None
    return Completion(ChatReply(text, finish_reason), prompt_tokens, completion_tokens)
