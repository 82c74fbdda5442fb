"""Shared fixtures: data location, an isolated response cache, the bench server (bench/fake_server) and a real
LLM server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fake_server import FakeServer
from textgrad import engine as engine_module
from textgrad import interrupt, local_server, structured

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


@pytest.fixture(autouse=True)
def _isolated_engine_cache(tmp_path: Path) -> Iterator[Path]:
    """Every test gets its own response cache, so no test is served from another's answers.

    Engines are memoised per cache directory, so this also gives each test fresh
    engines and counters. A test may still call configure() or pass cache_dir itself.
    """
    cache_dir = tmp_path / "llm-cache"
    engine_module.configure(cache_dir=str(cache_dir), use_cache=True)
    yield cache_dir
    engine_module.configure(cache_dir=None, use_cache=True)
    structured.reset()  # the --structured_output mode and servers' fallbacks to tags are per process
    interrupt.reset()  # a test that stops a run (Ctrl-C, SIGTERM) must not stop the next test's calls


@pytest.fixture(scope="session")
def local_engine_url() -> Iterator[str]:
    """One real embedded llama.cpp pool of two servers shared by every test that needs it (two whatever the
    machine's cores, so the pool's behaviour is tested everywhere)."""
    engine_module.configure(local_servers=2)
    try:
        url = local_server.ensure_local_server()
    finally:
        engine_module.configure(local_servers=None)
    yield url
    local_server.stop_local_server()


@pytest.fixture
def make_fake_server() -> Iterator[Any]:
    """Factory for bench servers with echo replies ("reply from <model> to: <message>"), all stopped after
    the test. Options are FakeServer's (bench/fake_server): models, latency, fail_with, routes, ..."""
    servers: list[FakeServer] = []

    def make(**options: Any) -> FakeServer:
        servers.append(FakeServer(**{"replies": "echo", **options}).start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def fake_server(make_fake_server: Any) -> FakeServer:
    return make_fake_server()


@pytest.fixture
def json_server(make_fake_server: Any) -> Any:
    """Factory for servers that answer the given routes: fixed JSON, a function of the request's body
    returning (status, JSON), or None for HTTP 404. Their other routes are the bench server's."""
    return lambda routes: make_fake_server(routes=routes)
