"""An OpenAI-compatible server with fixed latency, a fixed number of slots and deterministic replies.

It stands in for a batching LLM server (vLLM, SGLang, llama-server with parallel slots) in the
benchmarks and in tests: `slots` requests are served at once, each takes `latency` seconds, the
rest wait in a queue. Faults (HTTP 500, 429, hangs, malformed replies) are injected from a seeded
RNG, and `max_context` makes it refuse over-long requests the way llama.cpp does. Like small models,
its answers obey an instruction in the system prompt to always give one answer (a poisoned prompt),
and with `quote_rate` its optimizer copies into the prompt a training question that the feedback quoted.

    python bench/fake_server.py --port 8011 --latency 0.3 --slots 16 [--rate_500 0.2 ...]

Structured output: `flavour` makes it check `response_format` the way one backend spells it
(llama-cpp-python: {"type": "json_object", "schema": ...}; vllm, sglang, openai, ollama: {"type":
"json_schema", "json_schema": {"name", "schema"}}), any other shape getting HTTP 400 naming the field;
no flavour accepts both. `structured=False` plays a server without structured output (HTTP 400 for any
response_format). A structured request is answered with a JSON object holding the text under the
schema's one property. `cut_at_max_tokens` cuts replies longer than max_tokens (finish_reason "length").

Besides the OpenAI routes it serves llama.cpp's GET /props and POST /tokenize (by the same count
of tokens it applies to `max_context`), and GET /stats and POST /stats/reset, so a benchmark can
run it in a separate process and still read its counters.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `textgrad` and `utils` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_replies import estimate_tokens, malformed_reply, prompt_token_logprobs, reply_for  # noqa: E402

FAULT_KINDS = ("http_500", "http_429", "timeout", "malformed")
JSON_OBJECT_FLAVOURS = ("llama-cpp-python",)
JSON_SCHEMA_FLAVOURS = ("vllm", "sglang", "openai", "ollama")
FLAVOURS = JSON_OBJECT_FLAVOURS + JSON_SCHEMA_FLAVOURS
CONTEXT_ERROR_MESSAGE = "the request exceeds the available context size, try increasing it"
DEFAULT_N_CTX = 8192


class FakeServer:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, *, latency: float = 0.0, slots: int = 16, seed: int = 0,
                 rate_500: float = 0.0, rate_429: float = 0.0, rate_timeout: float = 0.0,
                 timeout_sleep: float = 30.0, rate_malformed: float = 0.0, max_context: int | None = None,
                 model: str = "fake-model", logprobs: bool = True, port: int = 0,
                 prompts_kept: int = 2000, quote_rate: float = 0.0, flavour: str | None = None,
                 structured: bool = True, cut_at_max_tokens: bool = False) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if flavour is not None and flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}")
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
        self.model = model
        self.logprobs = logprobs
        self._slots = threading.Semaphore(slots)
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._prompts_kept = prompts_kept
        self._reset_counters()
        self._httpd = _Listener(("127.0.0.1", port), _make_handler(self))
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
        self._requests = 0
        self._completed = 0
        self._in_flight = 0
        self._waiting = 0
        self._processing = 0
        self._peak_in_flight = 0
        self._peak_processing = 0
        self._faults = dict.fromkeys(FAULT_KINDS, 0)
        self._context_rejections = 0
        self._by_kind: dict[str, int] = collections.Counter()
        self._malformed_by_kind: dict[str, int] = collections.Counter()  # malformed replies sent, by kind
        self._logprob_requests = 0
        self._response_formats: dict[str, int] = collections.Counter()  # by type; "none" without the field
        self._structured_rejections = 0
        self._prompts: collections.deque = collections.deque(maxlen=self._prompts_kept)

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
                "prompts_seen": list(self._prompts),
            }

    # -- request handling (called from handler threads) ---------------------------------------

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
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

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

    def chat(self, request: dict[str, Any]) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """(status, JSON body or None for a hang-up, extra headers) for one chat request."""
        messages = request.get("messages") or []
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 0)
        with self._lock:
            self._requests += 1
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
        kind, text = reply_for(messages, json_field, self.quote_rate)
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
        tokens: list[str] = []
        logprobs: list[float | None] = []
        if request.get("echo"):
            tokens, logprobs = prompt_token_logprobs(prompt)
        generated = "\n" if max_tokens > 0 else ""
        if generated:
            tokens.append(generated)
            logprobs.append(-0.5)
        offsets, position = [], 0
        for token in tokens:
            offsets.append(position)
            position += len(token)
        text = (prompt if request.get("echo") else "") + generated
        return 200, {
            "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets,
                                      "top_logprobs": None} if request.get("logprobs") is not None else None}],
            "usage": {"prompt_tokens": estimate_tokens(prompt), "completion_tokens": len(generated),
                      "total_tokens": estimate_tokens(prompt) + len(generated)},
        }

    def props(self) -> dict[str, Any]:
        return {"default_generation_settings": {"n_ctx": self.max_context or DEFAULT_N_CTX}}

    def stats_json(self) -> dict[str, Any]:
        stats = self.stats
        stats["prompts_seen"] = len(stats["prompts_seen"])
        return stats


def check_response_format(shape: Any, flavour: str | None) -> str:
    """The one string property a structured request asks for; ValueError (the 400 message) for a shape
    this flavour does not accept, or a schema beyond one string property (maxLength kills llama-cpp-python)."""
    kind = shape.get("type") if isinstance(shape, dict) else None
    accepted = ("json_object",) if flavour in JSON_OBJECT_FLAVOURS else ("json_schema",) if flavour else (
        "json_object", "json_schema")
    if kind not in accepted:
        raise ValueError(f"response_format type {kind!r} is not accepted here; use {' or '.join(accepted)}")
    if kind == "json_schema":
        spec = shape.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError("response_format.json_schema needs a name and a schema")
        schema = spec.get("schema")
    else:
        schema = shape.get("schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict) or schema.get("type") != "object" or len(properties) != 1:
        raise ValueError("response_format schema: expected an object with one property")
    field, prop = next(iter(properties.items()))
    if not isinstance(prop, dict) or prop.get("type") != "string" or "maxLength" in json.dumps(schema):
        raise ValueError("response_format schema: expected one string property without maxLength")
    if schema.get("required") != [field]:
        raise ValueError(f"response_format schema: {field!r} must be required")
    return field


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connection attempts of a burst of clients, and the kernel retries
    # them only after a second: a latency that no real LLM server adds.
    request_queue_size = 256


def _make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers: no reconnect per request
        # Headers and body go out in separate writes; with Nagle's algorithm on, the body waits for the
        # client's delayed ACK (40 ms on Linux). Real servers set TCP_NODELAY too.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _route(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def do_GET(self) -> None:
            route = self._route()
            if route == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": server.model, "object": "model", "created": 0, "owned_by": "fedtextgrad-bench"}]})
            elif route == "/props":
                self._send(200, server.props())
            elif route == "/stats":
                self._send(200, server.stats_json())
            elif route in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            route = self._route()
            if route == "/stats/reset":
                server.reset_stats()
                self._send(200, {"reset": True})
                return
            try:
                request = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, {"error": {"message": "the body is not JSON", "code": 400}})
                return
            if route == "/tokenize":  # llama.cpp's route: {"content"} -> {"tokens"}, by the server's own count
                self._send(200, {"tokens": list(range(estimate_tokens(str(request.get("content") or ""))))})
                return
            if route not in ("/v1/chat/completions", "/v1/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            server._enter()
            headers: dict[str, str] = {}
            try:
                if route == "/v1/chat/completions":
                    status, payload, headers = server.chat(request)
                else:
                    status, payload = server.completion(request)
            finally:
                server._leave()  # before the reply goes out, so the client's next request never overlaps it
            if payload is None:  # simulated hang: close without a reply
                self.close_connection = True
                return
            self._send(status, payload, headers)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    for kind in ("500", "429", "timeout", "malformed"):
        parser.add_argument(f"--rate_{kind}", type=float, default=0.0)
    parser.add_argument("--timeout_sleep", type=float, default=30.0)
    parser.add_argument("--max_context", type=int, default=None)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--no_logprobs", action="store_true")
    parser.add_argument("--quote_rate", type=float, default=0.0,
                        help="share of optimizer replies that copy a training question into the prompt")
    parser.add_argument("--flavour", choices=FLAVOURS, default=None, help="check response_format as this backend")
    parser.add_argument("--no_structured", action="store_true", help="refuse any response_format (HTTP 400)")
    parser.add_argument("--cut_at_max_tokens", action="store_true", help="cut long replies (finish_reason length)")
    args = parser.parse_args(argv)
    try:
        server = FakeServer(latency=args.latency, slots=args.slots, seed=args.seed, rate_500=args.rate_500,
                            rate_429=args.rate_429, rate_timeout=args.rate_timeout,
                            timeout_sleep=args.timeout_sleep, rate_malformed=args.rate_malformed,
                            max_context=args.max_context, model=args.model, logprobs=not args.no_logprobs,
                            port=args.port, quote_rate=args.quote_rate, flavour=args.flavour,
                            structured=not args.no_structured, cut_at_max_tokens=args.cut_at_max_tokens)
    except OSError as exc:  # most often the port is taken, by an earlier bench server still running
        print(f"error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc}): stop the process using it "
              f"(e.g. an earlier fake_server.py) or pass another --port", file=sys.stderr)
        sys.exit(2)
    print(server.base_url, flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
