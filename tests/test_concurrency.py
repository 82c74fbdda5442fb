"""Concurrency is real, capped per endpoint, and invisible in the results.

Whole rounds run against the bench server (bench/fake_server): it counts the requests it holds
open at once, and its replies are a pure function of the request, so any difference between a
concurrent and a sequential run would come from our code.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.fake_server import FakeServer
from bench.run import build_experiment
from textgrad.engine import get_engine
from textgrad.parallel import run_concurrently
from textgrad.serving.runtime import Runtime, use_runtime
from textgrad.serving.settings import Settings
from textgrad.serving.slots import EndpointSlots, background
from utils.federated.client import Engines
from utils.federated.plan import plan_run
from utils.federated.rounds import run_experiment
from utils.reporting import prompt_stats
from utils.reporting.tracking import open_run_log


def run_round(server: FakeServer, tmp_path: Path, name: str, max_concurrency: int, monkeypatch: pytest.MonkeyPatch,
              cache: str | None = None, **shape: int) -> dict[str, Any]:
    """One experiment against `server` with its own cache (unless named) and run folder."""
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    # A runtime of its own: the cap belongs to the URL in a runtime, and a port an earlier server of the
    # test had must not carry its cap.
    runtime = Runtime(Settings(cache_dir=str(tmp_path / (cache or f"cache-{name}")), max_concurrency=max_concurrency))
    with use_runtime(runtime):
        engine = get_engine("vllm-fake-model")
        assert engine.request_slot().size == max_concurrency
        shape = {"clients": 3, "steps": 2, "batch": 3, "val": 8, "test": 8, "seed": 5, "rounds": 1, **shape}
        log = open_run_log(tmp_path / name, "disabled", "tests", tmp_path / "comet")
        results = run_experiment(build_experiment(**shape), Engines(test=engine, evaluation=engine), log)
    runtime.close()
    return results


def prompts_by_round(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted((run_dir / "prompts").rglob("*.txt"))}


def test_a_round_keeps_several_requests_in_flight_but_never_more_than_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 clients x batch 3 want 9 requests at once, evaluations 16: a cap of 4 binds.
    with FakeServer(latency=0.05, slots=16) as server:
        results = run_round(server, tmp_path, "capped", 4, monkeypatch)
        stats = server.stats
    assert 1 < stats["peak_in_flight"] <= 4
    assert stats["peak_in_flight"] == 4  # the cap is reached, not merely respected
    assert results["llm"]["calls"] == stats["requests"]


def test_concurrent_and_sequential_runs_give_the_same_prompts_and_accuracies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for name, cap in (("concurrent", 16), ("sequential", 1)):
        with FakeServer(latency=0.01, slots=16) as server:
            runs[name] = run_round(server, tmp_path, name, cap, monkeypatch, rounds=2)
            runs[name]["peak"] = server.stats["peak_in_flight"]
    concurrent, sequential = runs["concurrent"], runs["sequential"]
    assert sequential["peak"] == 1 and concurrent["peak"] > 1
    assert prompts_by_round(tmp_path / "concurrent") == prompts_by_round(tmp_path / "sequential")
    # start (trained text and its served form per task), then per round 3 clients + merge
    assert len(prompts_by_round(tmp_path / "concurrent")) == 2 + 2 * (3 + 1)
    for key in ("zero_shot", "final_test", "best", "final_prompt", "steps", "format_failures"):
        assert concurrent[key] == sequential[key], key
    assert [r["val"] for r in concurrent["rounds"]] == [r["val"] for r in sequential["rounds"]]
    assert ([r["client_train_accuracy"] for r in concurrent["rounds"]]
            == [r["client_train_accuracy"] for r in sequential["rounds"]])
    # The server's answers vary with the prompt, so equal accuracies are not trivially equal.
    accuracies = {concurrent["zero_shot"]["val"]["mean"], *(r["val"]["mean"] for r in concurrent["rounds"])}
    assert accuracies != {0.0} and accuracies != {1.0}
    events = [json.loads(line) for line in (tmp_path / "concurrent" / "events.jsonl").read_text().splitlines()]
    steps = [(e["round"], e["client"], e["step"]) for e in events if e["type"] == "step"]
    assert steps == sorted(steps)  # logged in client order, not in finishing order


def test_rerunning_a_finished_experiment_makes_no_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeServer(latency=0.0) as server:
        # A fresh process forgets the UID measures it took; only the disk cache can spare those requests.
        monkeypatch.setattr(prompt_stats, "_uid_cache", {})
        first = run_round(server, tmp_path, "first", 16, monkeypatch, cache="shared")
        assert server.stats["requests"] > 0 and server.stats["logprob_requests"] > 0
        server.reset_stats()
        monkeypatch.setattr(prompt_stats, "_uid_cache", {})
        again = run_round(server, tmp_path, "again", 16, monkeypatch, cache="shared")
        assert server.stats["requests"] == 0 and server.stats["logprob_requests"] == 0
    assert again["llm"]["calls"] == 0
    assert again["final_prompt"] == first["final_prompt"] and again["final_test"] == first["final_test"]
    assert again["rounds"][0]["aggregate_uid"] == first["rounds"][0]["aggregate_uid"] is not None


# ---------------------------------------------------------------- the per-endpoint slots


def test_a_freed_slot_goes_to_foreground_work_before_background_work() -> None:
    slots = EndpointSlots(1)
    order: list[str] = []

    def wait_for_slot(label: str, in_background: bool) -> None:
        if in_background:
            with background():
                slots.acquire()
        else:
            slots.acquire()
        order.append(label)
        slots.release()

    slots.acquire()  # held, so both below queue
    waiters = [threading.Thread(target=wait_for_slot, args=("background", True))]
    waiters[0].start()
    time.sleep(0.05)  # the background request waits first
    waiters.append(threading.Thread(target=wait_for_slot, args=("foreground", False)))
    waiters[1].start()
    time.sleep(0.05)
    slots.release()
    for waiter in waiters:
        waiter.join(timeout=5)
    assert order == ["foreground", "background"]


def test_reserved_slots_stay_out_of_reach_of_background_work_until_the_reservation_ends() -> None:
    slots = EndpointSlots(4)
    slots.reserve(3)  # round 1's widest wave, as the round loop reserves it before the zero-shot starts
    got: list[str] = []

    def take(label: str, in_background: bool) -> None:
        with background() if in_background else contextlib.nullcontext():
            slots.acquire()
        got.append(label)

    background_waiters = [threading.Thread(target=take, args=(f"zero-shot {i}", True)) for i in range(3)]
    for waiter in background_waiters:
        waiter.start()
    time.sleep(0.1)
    assert got == ["zero-shot 0"]  # 4 slots, 3 of them kept for the foreground: one for the background
    for i in range(3):  # the foreground arrives late and still finds its slots free
        take(f"round 1 wave 1, {i}", False)
    slots.release()  # a reply of the first wave: its slot stays with the foreground's next wave...
    time.sleep(0.1)
    assert len(got) == 4
    take("round 1 wave 2", False)  # ...which takes it a moment later
    slots.reserve(0)  # round 1 is over: the background may have every slot again
    slots.release()
    background_waiters[1].join(timeout=5)
    assert got[-2:] == ["round 1 wave 2", "zero-shot 1"]
    slots.release()
    background_waiters[2].join(timeout=5)
    assert got[-1] == "zero-shot 2"


def test_round_one_sends_its_first_wave_before_the_zero_shot_takes_the_slots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = {"clients": 2, "steps": 1, "batch": 2, "val": 12, "test": 12}
    with FakeServer(latency=0.4, slots=8) as server:
        run_round(server, tmp_path, "order", 8, monkeypatch, **shape)
        first = {body["messages"][-1]["content"] for body in server.chat_requests[:8]}  # the first 8 slots
    round_one = plan_run(build_experiment(**shape, seed=5)).rounds[0]
    first_wave = {ex.question for c in round_one.clients for ex in c.steps[0].batch}
    # Each client's first batch (2 examples): all 4 answers hold a slot among the first 8, beside 4 of the
    # 24 zero-shot answers started at the same time.
    assert len(first_wave) == 4 and first_wave <= first


def test_slots_bound_concurrency_and_background_reaches_worker_threads() -> None:
    slots = EndpointSlots(3)
    lock = threading.Lock()
    now = {"in": 0, "peak": 0}

    def work() -> bool:
        with slots:
            with lock:
                now["in"] += 1
                now["peak"] = max(now["peak"], now["in"])
            time.sleep(0.02)
            with lock:
                now["in"] -= 1
        from textgrad.serving.slots import _background

        return _background.get()

    with background():
        flags = run_concurrently([work] * 12)
    assert now["peak"] == 3
    assert flags == [True] * 12
    assert run_concurrently([work] * 2) == [False, False]
    with pytest.raises(ValueError):
        slots.release()
