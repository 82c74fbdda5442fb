"""Wall time of one FedTextGrad run in-process (main.py) and through Flower's simulation engine, with
the same flags and a cold response cache each, so both make every LLM call.

    python bench/flower_wall_time.py                      # FakeServer, 0.3 s per call, 16 slots
    python bench/flower_wall_time.py --engine local       # the embedded llama.cpp server (slow, one at a time)

Prints both wall times, Flower's overhead (Ray start-up, messages, each client rebuilding its shard
and engines every round) and whether both runs reached the same validation accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_server import FakeServer  # noqa: E402
from fedtextgrad_flower.run_config import ALLOWED_DIRS_VARIABLE  # noqa: E402
from fedtextgrad_flower.simulation import simulate  # noqa: E402
from main import main as main_cli  # noqa: E402
from textgrad.serving.runtime import current_runtime  # noqa: E402


def run_both(flags: dict[str, object], workdir: Path) -> dict[str, float]:
    seconds = {}
    started = time.monotonic()
    argv = [part for key, value in flags.items() for part in (f"--{key}", str(value))]
    if main_cli([*argv, "--cache_dir", str(workdir / "cache-in-process"), "--run_name", "in_process"]) != 0:
        raise SystemExit("the in-process run failed")
    seconds["in_process"] = time.monotonic() - started
    started = time.monotonic()
    simulate({**flags, "cache_dir": str(workdir / "cache-flower"), "run_name": "flower"})
    seconds["flower"] = time.monotonic() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("fake", "local"), default="fake")
    parser.add_argument("--latency", type=float, default=0.3, help="FakeServer seconds per call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    opts = parser.parse_args()

    fake = None
    if opts.engine == "fake":
        fake = FakeServer(latency=opts.latency, slots=16).start()
        os.environ["VLLM_BASE_URL"] = fake.base_url  # inherited by the Ray workers
        engine = "vllm-fake-model"
    else:
        os.environ["LOCAL_BASE_URL"] = current_runtime().embedded.shared_base_url()  # one pool for all clients
        engine = "local"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ[ALLOWED_DIRS_VARIABLE] = tmp  # as the operator: the ServerApp may write there
            flags = {"module": "train_homo_fed", "task": "synthetic_object_counting",
                     "homo_split_num": opts.clients, "max_epochs": opts.rounds, "max_steps": 1, "batch_size": 1,
                     "split_sizes": f"{opts.clients},3,3", "aggregate_method": "summarization",
                     "test_engine": engine, "evaluation_engine": engine, "max_tokens": 32,
                     "feedback_max_tokens": 32, "optimizer_max_tokens": 64, "merge_max_tokens": 64,
                     "output_dir": tmp, "comet_mode": "disabled"}
            seconds = run_both(flags, Path(tmp))
            vals = {name: [r["val"]["mean"] for r in json.loads((Path(tmp) / name / "results.json").read_text())[
                "rounds"]] for name in seconds}
    finally:
        if fake is not None:
            fake.stop()
        current_runtime().embedded.stop()
    print(f"\n{opts.clients} clients, {opts.rounds} rounds, engine {engine}"
          f"{f' ({opts.latency} s per call)' if fake else ''}")
    print(f"in-process         {seconds['in_process']:7.1f} s")
    print(f"Flower simulation  {seconds['flower']:7.1f} s   (+{seconds['flower'] - seconds['in_process']:.1f} s)")
    print(f"validation per round: in-process {vals['in_process']}, Flower {vals['flower']}")


if __name__ == "__main__":
    main()
