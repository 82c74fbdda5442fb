"""The HTTP layer against what broken servers and proxies send (bench/fake_server's `hostile` option): each
bad reply is a failed attempt, retried and counted, never a crash and never cached; a request has a deadline
in all, not between bytes; Retry-After holds off every call to the endpoint; a waiting call keeps its slot;
a reply far longer than its max_tokens is cut there."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from run_helpers import final_numbers, main_env, prompt_files, run_args, run_main

from bench.fake_server import FakeServer
from bench.fake_server.hostile import HOSTILE_KINDS, RawReply, hostile_reply
from textgrad.engine import get_engine
from textgrad.errors import EngineError
from textgrad.serving import http, transport
from textgrad.serving.cache import ResponseCache
from textgrad.serving.runtime import Runtime
from textgrad.serving.transport import chat_body, overlong_limit, retry_after

BAD_BODIES = ("html", "bad_utf8", "surrogate", "no_choices")


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "BACKOFF_BASE_S", 0.01)
    for var in ("VLLM_BASE_URL", "VLLM_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def engine_on(server, monkeypatch: pytest.MonkeyPatch, **options):
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    return get_engine("vllm-m", **options)


def cache_entries(cache_dir: Path) -> list[Path]:
    return list(cache_dir.rglob("*.json"))


def test_every_hostile_kind_is_what_its_name_says() -> None:
    replies = {kind: hostile_reply(kind, "m", retry_after=7, trickle_seconds=0.5, huge_chars=1200)
               for kind in HOSTILE_KINDS if kind != "hang"}
    assert replies["html"].body.startswith(b"<!DOCTYPE html>") and replies["html"].status == 200
    with pytest.raises(UnicodeDecodeError):
        replies["bad_utf8"].body.decode("utf-8")
    assert b"\\ud800" in replies["surrogate"].body
    assert replies["retry_after"] == RawReply(429, replies["retry_after"].body, headers={"Retry-After": "7"})
    assert replies["trickle"].trickle == 0.5 and len(replies["huge"].body) > 1200


@pytest.mark.parametrize("kind", BAD_BODIES)
def test_a_bad_body_is_retried_counted_and_never_cached(kind: str, make_fake_server, monkeypatch: pytest.MonkeyPatch,
                                                        isolated_cache_dir: Path) -> None:
    server = make_fake_server(hostile=kind, hostile_requests=2)
    engine = engine_on(server, monkeypatch)
    assert engine.generate("still there?") == "reply from m to: still there?"
    stats = engine.stats.as_dict()
    assert (stats["invalid_replies"], stats["retries"], stats["failures"], stats["calls"]) == (2, 2, 0, 1)
    assert server.chat_count == 3
    assert len(cache_entries(isolated_cache_dir)) == 1  # the good reply only


@pytest.mark.parametrize("kind", BAD_BODIES)
def test_a_server_that_only_sends_bad_bodies_fails_the_call_in_one_line(kind: str, make_fake_server,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       isolated_cache_dir: Path) -> None:
    server = make_fake_server(hostile=kind)
    engine = engine_on(server, monkeypatch)
    with pytest.raises(EngineError) as info:
        engine.generate("anyone?")
    message = str(info.value)
    assert "unusable reply" in message and "\n" not in message
    assert {"html": "not JSON", "bad_utf8": "not UTF-8", "surrogate": "surrogate",
            "no_choices": "no chat completion"}[kind] in message
    stats = engine.stats.as_dict()
    assert stats["invalid_replies"] == transport.MAX_ATTEMPTS == server.chat_count
    assert stats["failures"] == 1
    assert cache_entries(isolated_cache_dir) == []


def test_a_trickling_reply_is_abandoned_at_the_deadline_not_between_bytes(make_fake_server, runtime: Runtime,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A byte every 0.2 s: a limit between bytes of 1 s never fires, the whole reply would take a minute.
    server = make_fake_server(hostile="trickle", hostile_requests=1, trickle_seconds=0.2)
    runtime.configure(request_timeout=1.0)
    engine = engine_on(server, monkeypatch)
    started = time.monotonic()
    assert engine.generate("slowly") == "reply from m to: slowly"  # the retry gets a whole reply
    assert time.monotonic() - started < 4.0
    assert engine.stats.retries == 1 and engine.stats.failures == 0


def test_a_hanging_server_fails_the_call_after_three_deadlines(make_fake_server, runtime: Runtime,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_fake_server(hostile="hang")
    runtime.configure(request_timeout=0.5)
    engine = engine_on(server, monkeypatch)
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"no complete reply within 0\.5 s \(3 times"):
        engine.generate("hello?")
    assert time.monotonic() - started < 3 * 0.5 + 2.0
    assert server.chat_count == 3 and engine.stats.failures == 1


def test_retry_after_holds_off_every_call_to_the_endpoint(make_fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_fake_server(hostile="retry_after", hostile_requests=1, retry_after=1.5)
    engine = engine_on(server, monkeypatch)
    first = threading.Thread(target=engine.generate, args=("first",))
    first.start()
    deadline = time.monotonic() + 10
    while engine.stats.retries < 1:  # the 429 came back and was read
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert engine.generate("second") == "reply from m to: second"  # a call that never got a 429
    first.join(10)
    rejected, *later = server.arrivals
    assert len(later) == 2 and min(later) >= rejected + 1.5 - 0.05
    assert engine.stats.failures == 0


def test_a_call_waiting_to_retry_keeps_its_slot(make_fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "BACKOFF_BASE_S", 0.5)
    server = make_fake_server(fail_with=[500])
    engine = engine_on(server, monkeypatch, max_concurrency=1)
    first = threading.Thread(target=engine.generate, args=("a",))
    first.start()
    deadline = time.monotonic() + 10
    while server.chat_count < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.generate("b")
    first.join(10)
    # b waited for a's retry: during a's backoff no other call went out.
    assert [r["messages"][-1]["content"] for r in server.chat_requests] == ["a", "a", "b"]


def test_a_reply_far_longer_than_max_tokens_is_cut_and_counted(make_fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_fake_server(hostile="huge", huge_chars=100_000)
    engine = engine_on(server, monkeypatch)
    reply = engine.chat_reply([{"role": "user", "content": "rewrite the prompt"}], max_tokens=32)
    assert len(reply.text) == overlong_limit(32) < 100_000 and reply.finish_reason == "length"
    assert engine.stats.overlong_replies == 1


def test_a_body_larger_than_any_reply_is_refused(make_fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_REPLY_BYTES", 50_000)
    server = make_fake_server(hostile="huge", hostile_requests=1, huge_chars=100_000)
    engine = engine_on(server, monkeypatch)
    assert engine.generate("small please") == "reply from m to: small please"
    assert engine.stats.invalid_replies == 1


def test_retry_after_is_read_as_seconds_or_a_date_and_capped() -> None:
    assert retry_after({"Retry-After": "30"}) == 30.0
    assert retry_after({"retry-after": "1e9"}) == transport.RETRY_AFTER_CAP_S
    assert retry_after({"Retry-After": "nan"}) == retry_after({"Retry-After": "-3"}) == retry_after({}) == 0.0
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= retry_after({"Retry-After": soon}) <= 61


def test_the_cache_key_covers_every_field_of_the_request(make_fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = chat_body("m", messages, temperature=0, max_tokens=5)
    key = ResponseCache.request_key(body, endpoint="http://a/v1")
    assert key == ResponseCache.make_key("m", messages, {"temperature": 0.0, "max_tokens": 5}, endpoint="http://a/v1")
    variants = [{**body, "top_p": 0.9}, {**body, "response_format": {"type": "json_object"}},
                {**body, "messages": [{"role": "user", "content": "hi!"}]}, {**body, "model": "n"}]
    keys = {ResponseCache.request_key(v, endpoint="http://a/v1") for v in variants}
    assert len(keys) == len(variants) and key not in keys
    assert ResponseCache.request_key(body, endpoint="http://b/v1") != key
    # And an engine sends what it keys: a structured request is its own request.
    server = make_fake_server()
    engine = engine_on(server, monkeypatch)
    engine.chat(messages)
    engine.chat(messages, response_format={"type": "json_object", "schema": {"type": "object"}})
    assert server.chat_count == 2


# ---------------------------------------------------------------- whole runs against a hostile server

RUN = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
       "--homo_split_num", "2", "--max_epochs", "2", "--max_steps", "1", "--batch_size", "2", "--seed", "3",
       "--aggregate_method", "summarization", "--request_timeout", "2"]
HOSTILITIES: dict[str, dict[str, Any]] = {
    "clean": {},
    "html_at_first": {"hostile": "html", "hostile_requests": 3},
    "trickle_at_first": {"hostile": "trickle", "hostile_requests": 2, "trickle_seconds": 0.5},
    "huge_always": {"hostile": "huge", "huge_chars": 100_000},
    "html_always": {"hostile": "html"},
}


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("hostile-runs")

    def launch(name: str) -> tuple[Any, Path]:
        with FakeServer(latency=0.01, **HOSTILITIES[name]) as server:
            done = run_main(run_args(root / "out", name, root / f"cache-{name}", *RUN), main_env(server.base_url))
        return done, root / "out" / name

    with ThreadPoolExecutor(max_workers=len(HOSTILITIES)) as pool:
        return dict(zip(HOSTILITIES, pool.map(launch, HOSTILITIES), strict=True))


def results_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow  # whole runs, one of them retried until it stops
@pytest.mark.parametrize("name", ["html_at_first", "trickle_at_first"])
def test_a_run_rides_out_bad_replies_and_stalls_with_nothing_lost(name: str, hostile_runs: dict) -> None:
    (clean, clean_dir), (done, run_dir) = hostile_runs["clean"], hostile_runs[name]
    assert clean.returncode == 0 and done.returncode == 0, done.stderr[-2000:]
    results = results_of(run_dir)
    assert final_numbers(results) == final_numbers(results_of(clean_dir))
    assert prompt_files(run_dir) == prompt_files(clean_dir)
    expected = {"html_at_first": ("invalid_replies", 3), "trickle_at_first": ("retries", 2)}[name]
    assert results["llm"][expected[0]] == expected[1]


@pytest.mark.slow
def test_runaway_replies_never_become_a_prompt(hostile_runs: dict) -> None:
    done, run_dir = hostile_runs["huge_always"]
    assert done.returncode == 0, done.stderr[-2000:]
    results = results_of(run_dir)
    assert results["llm"]["overlong_replies"] > 0
    assert results["steps"]["accepted"] == 0 and results["format_failures"]["optimizer_truncated"] == 4
    start = json.loads((run_dir / "checkpoint.json").read_text())["starting_prompt"]
    assert results["final_prompt"] == start
    assert max(p.stat().st_size for p in (run_dir / "prompts").rglob("*.txt")) < 10_000


@pytest.mark.slow
def test_a_server_that_only_sends_html_stops_the_run_in_one_line(hostile_runs: dict) -> None:
    done, run_dir = hostile_runs["html_always"]
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert lines[-1].startswith("error: the zero-shot evaluation failed") and "the reply is not JSON" in lines[-1]
    assert lines[-1].endswith(f"--resume --run_name html_always --output_dir {run_dir.parent}")
    assert not list(Path(run_dir.parent.parent / "cache-html_always").rglob("*.json"))  # nothing cached
