"""A pool of identical servers behind one endpoint (textgrad.serving.server_pool): routing, the cap, dead servers.

The embedded llama.cpp pool itself is tested in tests/test_local_server.py; here the servers are the
OpenAI-compatible test server of conftest.py, reached through a comma-separated LOCAL_BASE_URL.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from textgrad.engine import get_engine
from textgrad.errors import EngineError
from textgrad.serving import llama_process, server_pool
from textgrad.serving.backends import route
from utils.config import UsageError, parse_args


def _closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_requests_go_to_the_least_busy_server_ties_to_the_first() -> None:
    pool = server_pool.Pool(["http://a/v1", "http://b/v1", "http://c/v1"])
    with pool.member() as first:
        assert first == "http://a/v1"
        with pool.member() as second, pool.member() as third:
            assert (second, third) == ("http://b/v1", "http://c/v1")
            with pool.member() as fourth:  # all busy once: back to the first
                assert fourth == "http://a/v1"
        with pool.member() as after:  # b and c are free again, a still busy
            assert after == "http://b/v1"
    assert [m.in_flight for m in pool.members] == [0, 0, 0]
    with pool.member() as alone:
        assert alone == "http://a/v1"


def test_a_server_that_refused_a_connection_is_avoided_a_timeout_is_not() -> None:
    pool = server_pool.Pool(["http://a/v1", "http://b/v1"])
    with pytest.raises(httpx.ReadTimeout), pool.member() as url:
        assert url == "http://a/v1"
        raise httpx.ReadTimeout("slow")
    with pool.member() as url:
        assert url == "http://a/v1"  # slow is not down
    with pytest.raises(httpx.ConnectError), pool.member():
        raise httpx.ConnectError("refused")
    for _ in range(3):
        with pool.member() as url:
            assert url == "http://b/v1"
    pool.members[0].down_until = 0.0  # its REMOTE_DOWN_S have passed
    with pool.member() as url:
        assert url == "http://a/v1"


def test_every_server_down_still_gets_requests() -> None:
    pool = server_pool.Pool(["http://a/v1", "http://b/v1"])
    for member in pool.members:
        member.down_until = float("inf")
    with pool.member() as url:
        assert url == "http://a/v1"  # the engine's retry loop then reports the failure


def test_local_base_url_may_list_several_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_BASE_URL", " http://127.0.0.1:8080/v1/, http://127.0.0.1:8081/v1 ,")
    local = route("local")
    assert local.base_url == "http://127.0.0.1:8080/v1"
    assert local.pool_urls == ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1")
    monkeypatch.setenv("LOCAL_BASE_URL", " , ")
    with pytest.raises(EngineError, match="names no server"):
        route("local")
    monkeypatch.setenv("VLLM_BASE_URL", "http://h:1/v1")  # only LOCAL_BASE_URL is a list
    assert route("vllm-m").pool_urls == ("http://h:1/v1",)


def test_pool_size_flag_then_variable_then_cores_at_most_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_SERVERS", raising=False)
    monkeypatch.setattr(llama_process, "thread_count", lambda: 8)
    assert llama_process.pool_size() == 4
    monkeypatch.setattr(llama_process, "thread_count", lambda: 2)
    assert llama_process.pool_size() == 2
    monkeypatch.setenv("LOCAL_SERVERS", "3")
    assert llama_process.pool_size() == 3
    assert llama_process.pool_size(1) == 1  # --local_servers, through the runtime's settings
    for bad in ("0", "x", "17", "-1"):
        monkeypatch.setenv("LOCAL_SERVERS", bad)
        with pytest.raises(EngineError, match=f"LOCAL_SERVERS={bad} is not a number of servers"):
            llama_process.pool_size()


def test_threads_are_split_evenly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_process, "thread_count", lambda: 8)
    command = llama_process.server_command("/m/SmolLM2.gguf", 9000, threads=8 // 3)
    assert command[command.index("--n_threads") + 1] == "2"
    # Prompt processing too: llama-cpp-python's own default is every core, which oversubscribes a pool.
    assert command[command.index("--n_threads_batch") + 1] == "2"


def test_local_servers_flag_is_checked() -> None:
    assert parse_args(["--module", "train_centralized", "--local_servers", "3"]).local_servers == 3
    assert parse_args(["--module", "train_centralized"]).local_servers is None
    with pytest.raises(UsageError, match="--local_servers: must be 1 or more, got 0"):
        parse_args(["--module", "train_centralized", "--local_servers", "0"])


def _answer_all(engine: Any, prompts: list[str]) -> list[str]:
    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: engine.generate(p, max_tokens=8), prompts))


def test_engine_spreads_requests_over_the_pool_under_one_cap(
        monkeypatch: pytest.MonkeyPatch, make_fake_server: Any) -> None:
    servers = [make_fake_server(latency=0.3), make_fake_server(latency=0.3)]
    monkeypatch.setenv("LOCAL_BASE_URL", ",".join(s.base_url for s in servers))
    engine = get_engine("local", max_concurrency=4)
    prompts = [f"question {i}" for i in range(8)]
    replies = _answer_all(engine, prompts)
    assert replies == [f"reply from fake-model to: question {i}" for i in range(8)]
    assert [s.chat_count for s in servers] == [4, 4]
    # The cap of 4 is for the pool as one endpoint: 2 in flight on each server, not 4 on each.
    assert [s.peak_in_flight for s in servers] == [2, 2]
    assert engine.base_url == servers[0].base_url
    stats = engine.stats.as_dict()
    assert stats["calls"] == 8 and stats["prompt_tokens"] == 8 * 11 and stats["completion_tokens"] == 8 * 7

    # The cache is keyed by the pool, not by the server that answered.
    assert _answer_all(engine, prompts) == replies
    assert engine.stats.as_dict()["cache_hits"] == 8 and sum(s.chat_count for s in servers) == 8


def test_calls_to_a_dead_server_are_retried_on_the_others(
        monkeypatch: pytest.MonkeyPatch, make_fake_server: Any) -> None:
    alive = make_fake_server(latency=0.05)
    monkeypatch.setenv("LOCAL_BASE_URL", f"{_closed_url()},{alive.base_url}")
    engine = get_engine("local", max_concurrency=4)
    # The model is discovered from the first server of the list, which is down: it is named in the route.
    monkeypatch.setattr(engine.transport, "_model", "fake-model")
    replies = _answer_all(engine, [f"q{i}" for i in range(4)])
    assert replies == [f"reply from fake-model to: q{i}" for i in range(4)]
    assert alive.chat_count == 4
    stats = engine.stats.as_dict()
    # At most the requests sent before the first refusal marked the server down failed once each.
    assert 1 <= stats["retries"] <= 4 and stats["failures"] == 0


def test_one_request_at_a_time_always_reaches_the_first_server(
        monkeypatch: pytest.MonkeyPatch, make_fake_server: Any) -> None:
    servers = [make_fake_server(), make_fake_server()]
    monkeypatch.setenv("LOCAL_BASE_URL", ",".join(s.base_url for s in servers))
    engine = get_engine("local")
    for i in range(3):
        engine.generate(f"sequential {i}", max_tokens=8)
    assert [s.chat_count for s in servers] == [3, 0]


def test_a_bad_local_servers_variable_stops_main_with_one_line(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if k != "LOCAL_BASE_URL"}, "LOCAL_SERVERS": "0"}
    done = subprocess.run([sys.executable, str(repo / "main.py"), "--config", str(repo / "configs/quickstart.yaml"),
                           "--output_dir", str(tmp_path), "--comet_mode", "disabled"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: LOCAL_SERVERS=0 is not a number of servers: set it to 1..16 (1 = one embedded llama.cpp server) "
        "or unset it"]
