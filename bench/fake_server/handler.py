"""The HTTP side of the fake server: routes, keep-alive connections, and the response_format check."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .hostile import RawReply, response_bytes
from .replies import estimate_tokens

if TYPE_CHECKING:
    from .server import FakeServer

JSON_OBJECT_FLAVOURS = ("llama-cpp-python",)
JSON_SCHEMA_FLAVOURS = ("vllm", "sglang", "openai", "ollama")
FLAVOURS = JSON_OBJECT_FLAVOURS + JSON_SCHEMA_FLAVOURS


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


class Listener(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connection attempts of a burst of clients, and the kernel retries
    # them only after a second: a latency that no real LLM server adds.
    request_queue_size = 256


def make_handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
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

        def _send_raw(self, reply: RawReply) -> None:
            """A hostile reply, byte for byte; trickled, it stops when the client hangs up or the server stops."""
            data = response_bytes(reply)
            if not reply.trickle:
                self.wfile.write(data)
                return
            self.close_connection = True
            for i in range(len(data)):
                if server._stopping.wait(reply.trickle):
                    return
                try:
                    self.wfile.write(data[i:i + 1])
                except OSError:  # the client gave up
                    return

        def _route(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def _own_route(self, route: str, body: dict[str, Any]) -> bool:
            """Answer a route given in FakeServer(routes=...); False if it is not one."""
            with server._lock:
                server.route_requests[route] += 1
                if route not in server.routes:
                    return False
                server.routed_requests.append((route, body, self.headers.get("Authorization", "")))
            answer = server.routes[route]
            if answer is None:
                self._send(404, {"error": {"message": f"no route {self.path}"}})
            elif callable(answer):
                self._send(*answer(body))
            else:
                self._send(200, answer)
            return True

        def do_GET(self) -> None:
            route = self._route()
            if self._own_route(route, {}):
                return
            if route == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "fedtextgrad-bench"}
                    for model in server.models]})
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
            if self._own_route(route, request if isinstance(request, dict) else {}):
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
                    auth = self.headers.get("Authorization", "")
                    status, payload, headers = server.chat(request, auth)
                    server.log_chat(request, auth, status if payload is not None else 0)
                else:
                    status, payload = server.completion(request)
            finally:
                server._leave()  # before the reply goes out, so the client's next request never overlaps it
            if payload is None:  # simulated hang: close without a reply
                self.close_connection = True
                return
            if isinstance(payload, RawReply):
                self._send_raw(payload)
                return
            self._send(status, payload, headers)
            server.replied()

    return Handler
