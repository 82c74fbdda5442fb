"""FakeServer: the state and the answers of the fake OpenAI-compatible server (see bench/fake_server/__init__.py).

`slots` requests are served at once, each takes `latency` seconds, the rest wait in a queue. Faults (HTTP 500,
429, hangs, malformed replies) come from a seeded RNG, `fail_with` answers the next chat requests with given
HTTP statuses, and `max_context` refuses over-long requests the way llama.cpp does. Replies are `method`
replies (replies.py: answers, feedback, edits, merges and verdicts, a pure function of the request; like small
models, its answers obey a system-prompt instruction to always give one answer, and with `quote_rate` its
optimizer copies a quoted training question into the prompt) or `echo` replies ("reply from <model> to: <last
message>", any model name, usage of 11 prompt and 7 completion tokens; "__null__" answers null content,
"__nousage__" leaves out the usage block) for the engine tests.

Structured output: `flavour` checks `response_format` the way one backend spells it (llama-cpp-python:
{"type": "json_object", "schema": ...}; vllm, sglang, openai, ollama: {"type": "json_schema", "json_schema":
{"name", "schema"}}), any other shape getting HTTP 400 naming the field; no flavour accepts both.
`structured=False` refuses any response_format (HTTP 400). A structured request is answered with a JSON
object holding the text under the schema's one property. `cut_at_max_tokens` cuts replies longer than
max_tokens (finish_reason "length"). Scale: `distinct_edits` makes every optimizer edit its own (a numbered
rule), as a real model's are; `merge_budget`: merges keep within their request's stated budget ("obey"),
never ("ignore"), or only when asked again ("second_try"). Hostile: `hostile` answers the first
`hostile_requests` chat requests (all if None) as a broken server or proxy would (hostile.py)."""

from __future__ import annotations

import collections
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .handler import FLAVOURS, Listener, check_response_format, make_handler
from .hostile import HANG, Hostility, RawReply
from .replies import (
    MERGE_BUDGETS,
    completion_reply,
    echo_reply,
    estimate_tokens,
    malformed_reply,
    reply_for,
)

FAULT_KINDS = ("http_500", "http_429", "timeout", "malformed")
CONTEXT_ERROR_MESSAGE = "the request exceeds the available context size, try increasing it"
DEFAULT_N_CTX = 8192
REPLIES = ("method", "echo")
# A route of `routes`: fixed JSON (HTTP 200), a function of the request's JSON body returning (status, JSON),
# or None (HTTP 404: this server has no such route).
Route = dict[str, Any] | Callable[[dict[str, Any]], tuple[int, dict[str, Any]]] | None


class FakeServer:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, *, latency: float = 0.0, slots: int = 16, seed: int = 0,
                 rate_500: float = 0.0, rate_429: float = 0.0, rate_timeout: float = 0.0,
                 timeout_sleep: float = 30.0, rate_malformed: float = 0.0, max_context: int | None = None,
                 model: str = "fake-model", logprobs: bool = True, port: int = 0,
                 prompts_kept: int = 2000, quote_rate: float = 0.0, flavour: str | None = None,
                 structured: bool = True, cut_at_max_tokens: bool = False, replies: str = "method",
                 models: tuple[str, ...] | None = None, fail_with: list[int] | None = None,
                 routes: dict[str, Route] | None = None, distinct_edits: bool = False,
                 merge_budget: str = "obey", hostile: str | None = None,
                 hostile_requests: int | None = None, retry_after: float = 30.0, trickle_seconds: float = 1.0,
                 huge_chars: int = 5_000_000) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.hostility = Hostility(hostile, hostile_requests, retry_after, trickle_seconds, huge_chars)
        if flavour is not None and flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}")
        if replies not in REPLIES:
            raise ValueError(f"replies must be one of {', '.join(REPLIES)}")
        if merge_budget not in MERGE_BUDGETS:
            raise ValueError(f"merge_budget must be one of {', '.join(MERGE_BUDGETS)}")
        self.distinct_edits, self.merge_budget = distinct_edits, merge_budget
        self.replies = replies
        self.models = models or (model,)  # what /v1/models lists; the first is the model served
        self.fail_with = list(fail_with or [])  # HTTP statuses to answer the next chat requests with, in order
        self.routes = dict(routes or {})  # answered instead of the server's own routes
        self.flavour = flavour
        self.structured = structured
        self.cut_at_max_tokens = cut_at_max_tokens
        if rate_500 + rate_429 + rate_timeout + rate_malformed > 1.0:
            raise ValueError("fault rates must add up to at most 1")
        if not 0.0 <= quote_rate <= 1.0:
            raise ValueError("quote_rate must be between 0 and 1")
        self.quote_rate = quote_rate  # share of optimizer replies that quote a training question
        self.latency = latency
        self.slots = slots
        self.seed = seed
        self.rates = {"http_500": rate_500, "http_429": rate_429, "timeout": rate_timeout,
                      "malformed": rate_malformed}
        self.timeout_sleep = timeout_sleep
        self.max_context = max_context
        self.model = self.models[0] if models else model
        self.logprobs = logprobs
        self._slots = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._prompts_kept = prompts_kept
        self._reset_counters()
        self._httpd = Listener(("127.0.0.1", port), make_handler(self))
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeServer:
        # A short poll interval makes stop() quick; tests start and stop many servers.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on a simulated hang
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # keep-alive connections would otherwise hold their threads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters ---------------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._requests = self._completed = self._in_flight = self._waiting = self._processing = 0
        self._peak_in_flight = self._peak_processing = 0
        # time.monotonic() (one clock for every process of the machine) when the first LLM request came in
        # and when the last LLM reply went out, so a benchmark can time a client's start and exit.
        self._first_request_at: float | None = None
        self._last_reply_at: float | None = None
        self._faults = dict.fromkeys(FAULT_KINDS, 0)
        self._context_rejections = 0
        self._by_kind: dict[str, int] = collections.Counter()
        self._malformed_by_kind: dict[str, int] = collections.Counter()  # malformed replies sent, by kind
        self._logprob_requests = 0
        self._response_formats: dict[str, int] = collections.Counter()  # by type; "none" without the field
        self._structured_rejections = 0
        self._prompts: collections.deque = collections.deque(maxlen=self._prompts_kept)  # answered: (messages, max_tokens)
        self._chat_log: collections.deque = collections.deque(maxlen=self._prompts_kept)  # (body, auth, status)
        self._arrivals: collections.deque = collections.deque(maxlen=self._prompts_kept)  # time.monotonic() of each
        self.route_requests: collections.Counter[str] = collections.Counter()  # requests per path, any route
        self.routed_requests: list[tuple[str, dict[str, Any], str]] = []  # (path, body, auth) of `routes`

    def reset_stats(self) -> None:
        with self._lock:
            self._reset_counters()

    @property
    def stats(self) -> dict[str, Any]:
        """requests: every POST to chat/completions; in_flight/peak_in_flight: requests received and not
        yet answered, waiting for a slot or not; processing/peak_processing: those holding a slot."""
        with self._lock:
            return {
                "requests": self._requests, "completed": self._completed,
                "in_flight": self._in_flight, "peak_in_flight": self._peak_in_flight,
                "waiting": self._waiting, "processing": self._processing,
                "peak_processing": self._peak_processing,
                "faults_by_kind": dict(self._faults), "context_rejections": self._context_rejections,
                "requests_by_kind": dict(self._by_kind), "logprob_requests": self._logprob_requests,
                "response_formats": dict(self._response_formats),
                "structured_rejections": self._structured_rejections,
                "prompts_seen": list(self._prompts), "hostile_replies": self.hostility.sent,
                "first_request_at": self._first_request_at, "last_reply_at": self._last_reply_at,
            }

    # -- request handling (called from handler threads) ---------------------------------------

    @property
    def chat_log(self) -> list[tuple[dict[str, Any], str, int]]:
        """(body, Authorization header, HTTP status or 0 for a hang-up) of the last chat requests received
        (prompts_kept of them), answered or not."""
        with self._lock:
            return list(self._chat_log)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [body for body, _, _ in self.chat_log]

    @property
    def auth_headers(self) -> list[str]:
        return [auth for _, auth, _ in self.chat_log]

    def log_chat(self, request: dict[str, Any], auth: str, status: int) -> None:
        with self._lock:
            self._chat_log.append((request, auth, status))

    @property
    def arrivals(self) -> list[float]:
        """time.monotonic() at which each of the last chat requests arrived, in order."""
        with self._lock:
            return list(self._arrivals)

    @property
    def chat_count(self) -> int:
        return self.stats["requests"]

    @property
    def peak_in_flight(self) -> int:
        return self.stats["peak_in_flight"]

    def _draw_fault(self) -> tuple[str | None, int]:
        with self._lock:
            roll, variant = self._rng.random(), self._rng.randrange(1 << 30)
        threshold = 0.0
        for kind in FAULT_KINDS:
            threshold += self.rates[kind]
            if roll < threshold:
                return kind, variant
        return None, variant

    def _context_error(self, prompt_chars: int, max_tokens: int) -> dict[str, Any] | None:
        n_prompt = estimate_tokens("x" * prompt_chars)
        if self.max_context is None or n_prompt + max_tokens <= self.max_context:
            return None
        with self._lock:
            self._context_rejections += 1
        return {"error": {"code": 400, "message": CONTEXT_ERROR_MESSAGE, "type": "exceed_context_size_error",
                          "n_prompt_tokens": n_prompt, "n_ctx": self.max_context}}

    def _enter(self) -> None:
        with self._lock:
            if self._first_request_at is None:
                self._first_request_at = time.monotonic()
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def replied(self) -> None:
        """An LLM reply (or an error reply to an LLM request) went out."""
        with self._lock:
            self._last_reply_at = time.monotonic()

    def _serve_slot(self) -> None:
        """Wait for a slot, hold it for `latency` seconds."""
        with self._lock:
            self._waiting += 1
        with self._slots:
            with self._lock:
                self._waiting -= 1
                self._processing += 1
                self._peak_processing = max(self._peak_processing, self._processing)
            try:
                if self.latency > 0:
                    time.sleep(self.latency)
            finally:
                with self._lock:
                    self._processing -= 1

    def _structured_field(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
        """(the JSON field to answer under, or None for plain text; a 400 body when the shape is refused)."""
        shape = request.get("response_format")
        with self._lock:
            self._response_formats[shape.get("type", "?") if isinstance(shape, dict) else "none"] += 1
        if shape is None:
            return None, None
        try:
            field = check_response_format(shape, self.flavour) if self.structured else None
            if field is None:
                raise ValueError("response_format is not supported by this server")
        except ValueError as exc:
            with self._lock:
                self._structured_rejections += 1
            return None, {"error": {"code": 400, "message": str(exc), "type": "invalid_request_error",
                                    "param": "response_format"}}
        return field, None

    def chat(self, request: dict[str, Any], auth: str = "") -> tuple[int, dict[str, Any] | RawReply | None,
                                                                     dict[str, str]]:
        """(status, JSON body, a RawReply or None for a hang-up, extra headers) for one chat request."""
        messages = request.get("messages") or []
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 0)
        with self._lock:
            self._requests += 1
            self._arrivals.append(time.monotonic())
            status = self.fail_with.pop(0) if self.fail_with else 200
            hostile = self.hostility.due()
        if hostile == HANG:
            self._stopping.wait()  # until the server stops
            return 0, None, {}
        if hostile is not None:
            return 200, self.hostility.reply(str(request.get("model"))), {}
        if status == 401:  # like some proxies, the key is echoed back: the engine must redact it
            return 401, {"error": {"message": f"invalid key {auth}\nsecond line", "code": 401}}, {}
        if status != 200:
            self._serve_slot()
            return status, {"error": {"message": f"injected failure {status}", "code": status}}, {}
        if self.replies == "echo":
            self._serve_slot()
            return 200, echo_reply(request, messages), {}
        if request.get("model") != self.model:
            return 404, {"error": {"message": f"model {request.get('model')!r} not found; "
                                              f"this server serves {self.model!r}", "code": 404}}, {}
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        error = self._context_error(prompt_chars, max_tokens)
        if error is not None:
            return 400, error, {}
        json_field, refusal = self._structured_field(request)
        if refusal is not None:
            return 400, refusal, {}
        fault, variant = self._draw_fault()
        if fault == "timeout":
            with self._lock:
                self._faults["timeout"] += 1
            # A hung request holds no slot, so the rest of the server stays responsive.
            self._stopping.wait(self.timeout_sleep)
            return 0, None, {}
        self._serve_slot()
        if fault in ("http_500", "http_429"):
            with self._lock:
                self._faults[fault] += 1
            status = 500 if fault == "http_500" else 429
            headers = {"Retry-After": "0"} if status == 429 else {}
            return status, {"error": {"message": f"injected fault: HTTP {status}", "code": status}}, headers
        kind, text = reply_for(messages, json_field, self.quote_rate, self.distinct_edits, self.merge_budget)
        if fault == "malformed":
            # Each kind of request cycles through the malformations in order, so a run with a few
            # malformed optimizer replies meets every one of them, whatever order its threads send in.
            with self._lock:
                nth = self._malformed_by_kind[kind]
                self._malformed_by_kind[kind] += 1
            text = malformed_reply(kind, text, nth, structured=json_field is not None)
        finish_reason = "stop"
        if self.cut_at_max_tokens and max_tokens and estimate_tokens(text) > max_tokens:
            text, finish_reason = text[:max_tokens * 4], "length"
        with self._lock:
            if fault:
                self._faults[fault] += 1
            self._completed += 1
            self._by_kind[kind] += 1
            self._prompts.append((messages, max_tokens))
        return 200, {
            "id": f"chatcmpl-fake-{variant}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": estimate_tokens("x" * prompt_chars),
                      "completion_tokens": estimate_tokens(text),
                      "total_tokens": estimate_tokens("x" * prompt_chars) + estimate_tokens(text)},
        }, {}

    def completion(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Legacy completions, used with echo + logprobs to read per-token log-probabilities of a prompt."""
        prompt = request.get("prompt") or ""
        if isinstance(prompt, list):
            prompt = "".join(str(p) for p in prompt)
        prompt = str(prompt)
        max_tokens = int(request.get("max_tokens") or 0)
        if request.get("model") != self.model:
            return 404, {"error": {"message": f"model {request.get('model')!r} not found", "code": 404}}
        if not self.logprobs:
            return 404, {"error": {"message": "this server does not serve log-probabilities", "code": 404}}
        error = self._context_error(len(prompt), max_tokens)
        if error is not None:
            return 400, error
        self._serve_slot()
        with self._lock:
            self._logprob_requests += 1
        return 200, completion_reply(prompt, max_tokens, bool(request.get("echo")),
                                     request.get("logprobs") is not None, self.model)

    def props(self) -> dict[str, Any]:
        return {"default_generation_settings": {"n_ctx": self.max_context or DEFAULT_N_CTX}}

    def stats_json(self) -> dict[str, Any]:
        stats = self.stats
        stats["prompts_seen"] = len(stats["prompts_seen"])
        return stats

