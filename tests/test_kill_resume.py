"""Killed runs and a server that goes away: real processes, real signals.

Every scenario runs `python main.py` against bench/fake_server in its own process, and all of them
end with the same final numbers as one uninterrupted reference run of the same experiment:
- kill -9 of the run at a random (seeded) moment after round 1, then --resume;
- the server's plug pulled mid-run: the round is retried, the run stops (exit 1, one line) at its last
  checkpoint, the server is restarted on the same port, then --resume;
- the plug pulled and the server back while the round waits to be retried: the run just finishes.
The scenarios mostly wait on the server, so a module fixture runs them side by side.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    REPO,
    ServerProcess,
    assert_run_files_intact,
    checkpoint_round,
    final_numbers,
    main_command,
    main_env,
    prompt_files,
    read_events,
    run_args,
    run_main,
    wait_for,
)

pytestmark = pytest.mark.slow  # kills runs and servers with real signals

ROUNDS = 4
EXPERIMENT = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "9,4,4",
              "--homo_split_num", "3", "--max_epochs", str(ROUNDS), "--max_steps", "1", "--batch_size", "3",
              "--seed", "11", "--aggregate_method", "summarization"]
SERVER = ("--latency", "0.05")
KILL_SEED = 20250611


def start_run(root: Path, server: ServerProcess, name: str = "run") -> subprocess.Popen[str]:
    return subprocess.Popen(main_command(run_args(root / "out", name, root / "cache", *EXPERIMENT)),
                            env=main_env(server.base_url), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def resume(root: Path, server: ServerProcess, name: str = "run") -> subprocess.CompletedProcess[str]:
    return run_main(["--resume", "--run_name", name, "--output_dir", str(root / "out")], main_env(server.base_url))


def events_lines(run_dir: Path) -> int:
    try:
        return (run_dir / "events.jsonl").read_text().count("\n")
    except OSError:
        return 0


def reference(root: Path) -> dict[str, Any]:
    with ServerProcess(*SERVER) as server:
        done = run_main(run_args(root / "out", "run", root / "cache", *EXPERIMENT), main_env(server.base_url))
    assert done.returncode == 0, done.stderr[-2000:]
    return {"run_dir": root / "out" / "run", "results": json.loads((root / "out" / "run" / "results.json").read_text())}


def kill_and_resume(root: Path) -> dict[str, Any]:
    rng = random.Random(KILL_SEED)
    run_dir = root / "out" / "run"
    with ServerProcess(*SERVER) as server:
        process = start_run(root, server)
        wait_for(lambda: checkpoint_round(run_dir) >= 1, 180, "round 1's checkpoint")
        # A random moment within the next rounds: a random number of further events (a round writes
        # 9 here), plus jitter.
        lines = events_lines(run_dir) + rng.randrange(0, 14)
        wait_for(lambda: events_lines(run_dir) >= lines or process.poll() is not None, 180, "more events")
        time.sleep(rng.uniform(0.0, 0.1))
        running_at_kill = process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.communicate()
        after_kill = {
            "code": process.returncode, "running": running_at_kill, "round": checkpoint_round(run_dir),
            "events": (run_dir / "events.jsonl").read_text(), "results_exists": (run_dir / "results.json").exists(),
            "prompts": {str(p.relative_to(run_dir)): p.read_text() for p in (run_dir / "prompts").rglob("*.txt")},
        }
        # The worst a kill can leave besides: a line torn mid-write, and an atomic write's temporary file.
        with open(run_dir / "events.jsonl", "a") as events:
            events.write('{"type": "step", "round": 9, "cli')
        (run_dir / "prompts" / ".global.txt.x1y2z3.tmp").write_text("half a pro")
        server.reset_stats()
        done = resume(root, server)
        requests = server.stats()["requests"]
    return {"after_kill": after_kill, "resume": done, "resume_requests": requests, "run_dir": run_dir}


def pull_plug_and_resume(root: Path) -> dict[str, Any]:
    run_dir = root / "out" / "run"
    server = ServerProcess(*SERVER).start()
    try:
        process = start_run(root, server)
        wait_for(lambda: checkpoint_round(run_dir) >= 2, 180, "round 2's checkpoint")
        server.kill()  # the plug: no goodbye, connections refused from now on
        killed_at = checkpoint_round(run_dir)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=240)
        stopped = {"code": process.returncode, "stderr": stderr, "seconds": time.monotonic() - started,
                   "killed_at": killed_at, "round": checkpoint_round(run_dir),
                   "results_exists": (run_dir / "results.json").exists()}
        server.start(server.port)  # restarted where the run expects it
        done = resume(root, server)
    finally:
        server.kill()
    return {"stopped": stopped, "resume": done, "run_dir": run_dir}


def plug_back_during_retry(root: Path) -> dict[str, Any]:
    run_dir = root / "out" / "run"
    server = ServerProcess(*SERVER).start()
    try:
        process = start_run(root, server)
        stderr_lines: list[str] = []
        retry_announced = threading.Event()

        def read_stderr() -> None:
            for line in process.stderr:  # type: ignore[union-attr]
                stderr_lines.append(line)
                if "retrying it in" in line:
                    retry_announced.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        wait_for(lambda: checkpoint_round(run_dir) >= 1, 180, "round 1's checkpoint")
        server.kill()
        assert retry_announced.wait(120), "the run never announced a round retry"
        server.start(server.port)  # back during the pause before the retry
        process.wait(timeout=240)
        reader.join(timeout=10)
    finally:
        server.kill()
    return {"code": process.returncode, "stderr": "".join(stderr_lines), "run_dir": run_dir}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "reference": reference, "kill": kill_and_resume, "plug": pull_plug_and_resume, "plug_back": plug_back_during_retry,
}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    root = tmp_path_factory.mktemp("kill-resume")
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        return {name: pool.submit(run, root / name) for name, run in SCENARIOS.items()}


def same_as_reference(outcome: dict[str, Any], ref: dict[str, Any]) -> None:
    run_dir = outcome["run_dir"]
    assert_run_files_intact(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert final_numbers(results) == final_numbers(ref["results"])
    assert prompt_files(run_dir) == prompt_files(ref["run_dir"])
    # Each round is recorded once, whatever was cut off or retried on the way.
    assert [e["round"] for e in read_events(run_dir) if e["type"] == "round"] == list(range(1, ROUNDS + 1))


def test_kill_9_then_resume_finishes_with_the_same_results(scenarios: dict[str, Future]) -> None:
    ref, outcome = scenarios["reference"].result(), scenarios["kill"].result()
    killed = outcome["after_kill"]
    assert killed["code"] == -signal.SIGKILL and killed["running"], "the kill must hit a running run"
    assert 1 <= killed["round"] <= ROUNDS
    # What the kill left is whole: complete JSON lines (a torn last line at most) and whole prompt files.
    complete = killed["events"].split("\n")[:-1]
    assert all(json.loads(line) for line in complete)
    assert all(text.endswith("\n") for text in killed["prompts"].values())

    done = outcome["resume"]
    assert done.returncode == 0, done.stderr[-2000:]
    same_as_reference(outcome, ref)
    resumed = [e for e in read_events(outcome["run_dir"]) if e["type"] == "resume"]
    assert [e["from_round"] for e in resumed] == [killed["round"]]
    # Only the interrupted round and later work reach the server: rounds up to the checkpoint are not
    # recomputed. (The allowance outside rounds covers the final test and the zero-shot evaluation.)
    ref_results = ref["results"]
    round_calls = [r["llm"]["calls"] for r in ref_results["rounds"]]
    outside_rounds = ref_results["llm"]["calls"] - sum(round_calls)
    assert outcome["resume_requests"] <= sum(round_calls[killed["round"]:]) + outside_rounds


def test_server_pulled_mid_run_stops_cleanly_then_resume_gives_the_same_results(
        scenarios: dict[str, Future]) -> None:
    ref, outcome = scenarios["reference"].result(), scenarios["plug"].result()
    stopped = outcome["stopped"]
    assert stopped["code"] == 1
    last = stopped["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: ") and "failed 2 times" in last and "--resume --run_name run" in last
    assert "Traceback" not in stopped["stderr"]
    assert "retrying it in" in stopped["stderr"]  # the round was retried before giving up
    assert stopped["round"] == stopped["killed_at"] < ROUNDS and not stopped["results_exists"]

    done = outcome["resume"]
    assert done.returncode == 0, done.stderr[-2000:]
    same_as_reference(outcome, ref)
    # The stopped process's retries and failed calls are part of the run's cost in results.json.
    llm = json.loads((outcome["run_dir"] / "results.json").read_text())["llm"]
    assert llm["retries"] > 0 and llm["failures"] > 0


def test_server_back_before_the_round_retry_lets_the_run_finish(scenarios: dict[str, Future]) -> None:
    ref, outcome = scenarios["reference"].result(), scenarios["plug_back"].result()
    assert outcome["code"] == 0, outcome["stderr"][-2000:]
    assert "retrying it in" in outcome["stderr"] and "Traceback" not in outcome["stderr"]
    same_as_reference(outcome, ref)
