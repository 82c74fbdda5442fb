"""Server faults: the three modules run through `python main.py` against the bench server injecting HTTP
500/429, hung requests (timeouts) and malformed replies.

Each run gets its own server, so the server's fault counters can be checked against the run's own
retry counts. All runs start together (they mostly wait on the server) in one module fixture.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from run_helpers import final_numbers, main_env, prompt_files, read_events, run_args, run_main

from bench.fake_server import FakeServer

COMMON = ["--batch_size", "3", "--seed", "7", "--max_epochs", "2", "--request_timeout", "1"]
MODULES = {
    "train_centralized": ["--module", "train_centralized", "--task", "synthetic_object_counting",
                          "--split_sizes", "6,4,4", "--max_steps", "2"],
    "train_homo_fed": ["--module", "train_homo_fed", "--task", "synthetic_word_sorting", "--split_sizes", "9,4,4",
                       "--homo_split_num", "3", "--max_steps", "1", "--aggregate_method", "summarization"],
    "train_hetero_fed": ["--module", "train_hetero_fed", "--task", "synthetic_object_counting",
                         "synthetic_multistep_arithmetic", "--split_sizes", "3,4,4", "--max_steps", "1",
                         "--aggregate_method", "sum_uid"],
}
# The mix: 20% HTTP 500/429, 5% hung requests, 5% malformed replies; "transient" drops the
# malformed ones, which change what the run sees.
TRANSIENT = {"rate_500": 0.10, "rate_429": 0.10, "rate_timeout": 0.05}
FULL_MIX = {**TRANSIENT, "rate_malformed": 0.05}
RETRIED_KINDS = ("http_500", "http_429", "timeout")


class Run(NamedTuple):
    code: int
    stderr: str
    run_dir: Path
    server_stats: dict[str, Any]

    @property
    def results(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "results.json").read_text())


def launch(root: Path, name: str, argv: list[str], rates: dict[str, float]) -> Run:
    with FakeServer(latency=0.01, seed=zlib.crc32(name.encode()), timeout_sleep=3.0, **rates) as server:
        done = run_main(run_args(root / "out", name, root / f"cache-{name}", *argv), main_env(server.base_url))
        stats = server.stats
    return Run(done.returncode, done.stderr, root / "out" / name, stats)


def judge_task_dir(root: Path) -> Path:
    """A free-form BBH-style task, so --judge llm has answers to judge."""
    phrases = ["blue sky", "red apple", "green field", "old clock", "quiet lake", "tall tree", "warm bread",
               "cold rain", "bright star", "soft pillow", "fast train", "small boat"]
    examples = [{"input": f"Repeat the phrase exactly: {p}", "target": p} for p in phrases]
    (root / "judge-data").mkdir()
    (root / "judge-data" / "echo_phrase.json").write_text(json.dumps({"examples": examples}))
    return root / "judge-data"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("faults")
    malformed_argv = ["--module", "train_hetero_fed", "--task", "synthetic_object_counting", "BBH_echo_phrase",
                      "--data_dir", str(judge_task_dir(root)), "--judge", "llm", "--split_sizes", "3,4,4",
                      "--max_steps", "2", "--aggregate_method", "summarization"]
    plan = {"all_malformed": (COMMON + malformed_argv, {"rate_malformed": 1.0})}
    for module, argv in MODULES.items():
        for label, rates in (("clean", {}), ("transient", TRANSIENT), ("full_mix", FULL_MIX)):
            plan[f"{module}-{label}"] = (COMMON + argv, rates)
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {name: pool.submit(launch, root, name, argv, rates) for name, (argv, rates) in plan.items()}
    return {name: future.result() for name, future in futures.items()}


def transient_faults(run: Run) -> int:
    return sum(run.server_stats["faults_by_kind"][kind] for kind in RETRIED_KINDS)


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("label", ["transient", "full_mix"])
def test_faulty_runs_complete_and_count_every_retry(module: str, label: str, runs: dict[str, Run]) -> None:
    run = runs[f"{module}-{label}"]
    assert run.code == 0, run.stderr[-2000:]
    results = run.results
    assert results["rounds_completed"] == 2
    assert transient_faults(run) > 0
    # Every retried fault is one retry, or one failed call when its attempts ran out.
    assert results["llm"]["retries"] + results["llm"]["failures"] == transient_faults(run)
    rounds = [e for e in read_events(run.run_dir) if e["type"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2]
    per_round = [e["llm"]["retries"] for e in rounds]
    assert per_round == [r["llm"]["retries"] for r in results["rounds"]]
    assert 0 < sum(per_round) <= results["llm"]["retries"]
    steps = [e for e in read_events(run.run_dir) if e["type"] == "step"]
    counted = results["format_failures"]
    for kind in ("no_tags", "unparseable_json", "empty", "truncated"):
        assert sum(s["format_failure"] == kind for s in steps) == counted[f"optimizer_{kind}"]


def test_fault_kinds_were_all_injected(runs: dict[str, Run]) -> None:
    injected = {kind: sum(r.server_stats["faults_by_kind"][kind] for r in runs.values())
                for kind in ("http_500", "http_429", "timeout", "malformed")}
    assert all(count > 0 for count in injected.values()), injected


@pytest.mark.parametrize("module", list(MODULES))
def test_transient_faults_leave_results_equal_to_the_fault_free_run(module: str, runs: dict[str, Run]) -> None:
    clean, faulty = runs[f"{module}-clean"], runs[f"{module}-transient"]
    assert clean.code == 0 and faulty.code == 0, faulty.stderr[-2000:]
    assert clean.results["llm"]["retries"] == 0 < faulty.results["llm"]["retries"]
    assert final_numbers(faulty.results) == final_numbers(clean.results)
    assert prompt_files(faulty.run_dir) == prompt_files(clean.run_dir)


def test_every_reply_malformed_still_completes_and_counts_each_failure(runs: dict[str, Run]) -> None:
    run = runs["all_malformed"]
    assert run.code == 0, run.stderr[-2000:]
    results = run.results
    stats = run.server_stats
    assert stats["faults_by_kind"]["malformed"] == stats["completed"] > 0
    # No optimizer reply held a usable prompt: every step reverted and counted, the prompt never changed.
    assert results["steps"]["total"] == 2 * 2 * 2 and results["steps"]["accepted"] == 0
    unusable = {kind: results["format_failures"][f"optimizer_{kind}"] for kind in ("unparseable_json", "empty")}
    assert sum(unusable.values()) == results["steps"]["total"] and all(unusable.values())
    assert results["final_prompt"] == json.loads((run.run_dir / "checkpoint.json").read_text())["starting_prompt"]
    # No judge reply said yes or no: each judged answer counts once (repeats are answered by the cache).
    assert results["format_failures"]["judge"] >= stats["requests_by_kind"]["judge"] > 0
    assert results["final_test"]["last"]["mean"] == 0.0  # malformed answers score 0, never crash
