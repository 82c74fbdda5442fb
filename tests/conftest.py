"""Shared fixtures: data location, an isolated response cache, the bench server (bench/fake_server) and a real
LLM server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.fake_server import FakeServer
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
def _embedded_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPool]:
    """The embedded llama.cpp pool of the whole session, started by the first test that needs it: every
    test's runtime shares it, so llama.cpp loads once. Its servers log in the session's pytest folder: the
    log of one a test kills is kept by design, and must not stay behind in /tmp."""
    pool = EmbeddedPool(HttpClients(), StopFlag(), log_dir=str(tmp_path_factory.mktemp("llama-server-logs")))
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
