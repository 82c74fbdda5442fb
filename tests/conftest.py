"""Shared fixtures: data location, an isolated response cache, a fake and a real LLM server."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from textgrad.serving.embedded import EmbeddedPool
from textgrad.serving.http import HttpClients
from textgrad.serving.interrupt import StopFlag
from textgrad.serving.runtime import Runtime, use_runtime
from textgrad.serving.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# Fixtures that start a real llama.cpp server, Ray or a Flower SuperLink (and kill what is left): every test
# that asks for one, directly or through another fixture, is marked slow. Tests that start or kill such
# processes themselves carry @pytest.mark.slow.
SLOW_FIXTURES = {"local_engine_url", "small_llama_server", "no_stray_processes"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def _embedded_pool() -> Iterator[EmbeddedPool]:
    """The embedded llama.cpp pool of the whole session, started by the first test that needs it: every
    test's runtime shares it, so llama.cpp loads once."""
    pool = EmbeddedPool(HttpClients(), StopFlag())
    yield pool
    pool.stop()


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, _embedded_pool: EmbeddedPool) -> Iterator[Runtime]:
    """Every test gets a fresh runtime (engines, counters, caps, stop flag, reply formats, backward engine)
    with its own response cache, so no test is served from another's answers; only the embedded pool is
    shared. A test may still configure it or pass cache_dir itself."""
    fresh = Runtime(Settings(cache_dir=str(tmp_path / "llm-cache")), embedded=_embedded_pool)
    with use_runtime(fresh):
        yield fresh
    fresh.close()


@pytest.fixture
def isolated_cache_dir(runtime: Runtime) -> Path:
    return Path(runtime.settings.cache_directory())


@pytest.fixture(scope="session")
def local_engine_url(_embedded_pool: EmbeddedPool) -> str:
    """The session's embedded pool with two servers (two whatever the machine's cores, so the pool's
    behaviour is tested everywhere)."""
    return _embedded_pool.ensure(2)


class FakeOpenAIServer:
    """A tiny OpenAI-compatible server on loopback that records what it receives.

    Special user prompts steer it: "__null__" answers with null content and
    "__nousage__" omits the usage block. `fail_with` holds HTTP statuses to answer
    the next chat requests with, in order, before answering normally.
    """

    def __init__(self, *, delay: float = 0.0, fail_with: list[int] | None = None,
                 model_ids: tuple[str, ...] = ("fake-model",)) -> None:
        self.delay = delay
        self.fail_with = list(fail_with or [])
        self.model_ids = model_ids
        self.chat_requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def chat_count(self) -> int:
        with self._lock:
            return len(self.chat_requests)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest output clean

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": mid, "object": "model", "created": 0, "owned_by": "tests"}
                        for mid in fake.model_ids]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with fake._lock:
                    fake.chat_requests.append(request)
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                    status = fake.fail_with.pop(0) if fake.fail_with else 200
                try:
                    time.sleep(fake.delay)
                    if status == 401:
                        # Like some proxies, echo the credential back: the engine must redact it.
                        auth = self.headers.get("Authorization", "")
                        self._send(401, {"error": {"message": f"invalid key {auth}\nsecond line"}})
                    elif status != 200:
                        self._send(status, {"error": {"message": f"injected failure {status}"}})
                    else:
                        self._send(200, fake.completion(request))
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        return Handler

    @staticmethod
    def completion(request: dict[str, Any]) -> dict[str, Any]:
        last = request["messages"][-1]["content"] if request.get("messages") else ""
        content: str | None = None if last == "__null__" else f"reply from {request.get('model')} to: {last}"
        payload: dict[str, Any] = {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": request.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        }
        if last != "__nousage__":
            payload["usage"] = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        return payload


class JsonServer:
    """Answers JSON per path on loopback (GET or POST): a fixed payload with 200, or a function of the
    request's JSON body returning (status, payload); 404 on any other path. Counts requests per path."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.requests: collections.Counter[str] = collections.Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.requests[self.path] += 1
                route = routes.get(self.path)
                if callable(route):
                    status, payload = route(body)
                elif route is None:
                    status, payload = 404, {"error": "no route"}
                else:
                    status, payload = 200, route
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _reply

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def json_server() -> Iterator[Any]:
    """Factory for JsonServer instances, all stopped after the test."""
    servers: list[JsonServer] = []

    def make(routes: dict[str, Any]) -> JsonServer:
        servers.append(JsonServer(routes))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_fake_server() -> Iterator[Any]:
    """Factory for FakeOpenAIServer instances, all stopped after the test."""
    servers: list[FakeOpenAIServer] = []

    def make(**options: Any) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake_server(make_fake_server: Any) -> FakeOpenAIServer:
    return make_fake_server()
