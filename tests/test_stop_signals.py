"""SIGTERM and SIGHUP stop a run as Ctrl-C does: cleanly, with the resume command as the last line and exit code
128 + the signal's number; the calls the stopped process paid for are in the checkpoint, so the resumed
run's results count them. A signal never lands between a round's state change and its checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import REPO, checkpoint_round, main_command, main_env, run_args, run_main, wait_for

from bench.fake_server import FakeServer

pytestmark = pytest.mark.slow  # real processes and signals

MAX_CONCURRENCY = 4
EXPERIMENT = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "9,4,4",
              "--homo_split_num", "3", "--max_epochs", "3", "--max_steps", "1", "--batch_size", "3", "--seed", "5",
              "--aggregate_method", "summarization", "--max_concurrency", str(MAX_CONCURRENCY)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_the_run_resumably_and_its_calls_still_count(signum: int, tmp_path: Path) -> None:
    out, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    with FakeServer(latency=0.05) as server:
        process = subprocess.Popen(main_command(run_args(out, "run", tmp_path / "cache", *EXPERIMENT)),
                                   env=main_env(server.base_url), cwd=REPO, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        wait_for(lambda: checkpoint_round(run_dir) >= 1, 120, "round 1's checkpoint")
        # Well into round 2 (a round makes 35 calls): without its cost in the checkpoint, 15 calls would be lost.
        mark = server.chat_count
        wait_for(lambda: server.chat_count >= mark + 15, 60, "round 2's calls")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        stopped_round, finished = checkpoint_round(run_dir), (run_dir / "results.json").exists()
        done = run_main(["--resume", "--run_name", "run", "--output_dir", str(out)], main_env(server.base_url))
        requests = server.chat_count

    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and "attempt" not in stderr  # nothing blamed on the server
    assert stderr.strip().splitlines()[-1] == f"interrupted: continue with python main.py --resume --run_name run " \
                                              f"--output_dir {out}"
    assert 1 <= stopped_round < 3 and not finished
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rounds_completed"] == 3
    # Every request the server answered was a call of the run; at most the calls that started after the stop
    # was saved (one per slot) can be missing.
    assert requests - MAX_CONCURRENCY <= results["llm"]["calls"] <= requests


DEFERRED = """
import os, signal, sys
from textgrad.serving.interrupt import StopFlag, StopSignals
stop = StopFlag()
StopSignals(stop, lambda: "resume me").install()
try:
    with stop.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        print("the block went on", flush=True)
    print("not reached", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after the block, stop set: {stop.is_set()}, signal {stop.signal}", flush=True)
"""


def test_a_signal_inside_a_deferred_block_interrupts_when_it_ends() -> None:
    done = subprocess.run([sys.executable, "-c", DEFERRED], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["the block went on",
                                        f"interrupted after the block, stop set: True, signal {signal.SIGTERM}"]


ASLEEP_IN_A_WAIT = """
import signal, threading, time
from textgrad.serving.interrupt import StopFlag, StopSignals
StopSignals(StopFlag(), lambda: "resume me", grace_s=30).install()
held = threading.Lock()
held.acquire()

def worker():
    time.sleep(0.5)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # the kernel may pick any thread that is not main
    time.sleep(60)

threading.Thread(target=worker, daemon=True).start()
started = time.monotonic()
try:
    held.acquire()  # the main thread asleep in a wait, as on a round's futures
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.1f} s", flush=True)
"""


def test_a_signal_handed_to_another_thread_still_interrupts_a_main_thread_asleep_in_a_wait() -> None:
    done = subprocess.run([sys.executable, "-c", ASLEEP_IN_A_WAIT], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.startswith("interrupted after "), done.stdout + done.stderr
    assert float(done.stdout.split()[2]) < 5  # not the 30 s grace of the watchdog
