"""What server faults cost: one homogeneous FedTextGrad run per fault mix against the bench server.

    python bench/faults.py [--latency 0.05] [--rounds 3] [--request_timeout 1]

Each mix runs `python main.py` in a child process on its own cache, against a FakeServer injecting
HTTP 500/429, hung requests (the client gives up after --request_timeout) and malformed replies.
Printed per mix: requests the server saw, faults injected, retries and failed calls the run counted,
format failures, how often the run stopped (a phase failed twice; the bench then resumes it), wall
time, and whether the final numbers equal the fault-free run's (they should
for transient faults; malformed replies change what the run sees).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from bench.fake_server import FakeServer  # noqa: E402

MIXES = {
    "none": {},
    "10% 500/429": {"rate_500": 0.05, "rate_429": 0.05},
    "20% 500/429": {"rate_500": 0.10, "rate_429": 0.10},
    "20% 500/429 + 5% timeouts": {"rate_500": 0.10, "rate_429": 0.10, "rate_timeout": 0.05},
    "issue mix (+5% malformed)": {"rate_500": 0.10, "rate_429": 0.10, "rate_timeout": 0.05, "rate_malformed": 0.05},
    "40% 500/429": {"rate_500": 0.20, "rate_429": 0.20},
}


def run_once(mix: dict[str, float], args: argparse.Namespace, work: Path, name: str) -> dict:
    argv = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "9,6,6",
            "--homo_split_num", "3", "--max_epochs", str(args.rounds), "--max_steps", "2", "--seed", "3",
            "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model", "--comet_mode", "disabled",
            "--request_timeout", str(args.request_timeout), "--output_dir", str(work / "out"), "--run_name", name,
            "--cache_dir", str(work / f"cache-{name}")]
    resume = ["--resume", "--run_name", name, "--output_dir", str(work / "out")]
    stops = 0
    with FakeServer(latency=args.latency, seed=7, timeout_sleep=args.request_timeout + 2, **mix) as server:
        env = {**os.environ, "VLLM_BASE_URL": server.base_url, "HF_HUB_OFFLINE": "1"}
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *argv], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True)
        while done.returncode == 1 and stops < 3:  # a phase failed twice: the run stopped, resumable
            stops += 1
            done = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *resume], env=env, cwd=REPO_ROOT,
                                  capture_output=True, text=True)
        seconds = time.monotonic() - started
        stats = server.stats
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1]}")
    results = json.loads((work / "out" / name / "results.json").read_text())
    found = {k: results[k] for k in ("zero_shot", "best", "final_prompt", "final_test")}
    found["val"] = [r["val"] for r in results["rounds"]]
    return {"requests": stats["requests"], "faults": stats["faults_by_kind"], "llm": results["llm"],
            "stops": stops, "format_failures": sum(results["format_failures"].values()), "seconds": seconds,
            "run_seconds": results["wall_seconds"], "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--request_timeout", type=float, default=1.0)
    args = parser.parse_args()
    print(f"train_homo_fed, 3 clients, {args.rounds} rounds x 2 steps, server latency {args.latency} s, "
          f"request timeout {args.request_timeout} s")
    print(f"{'fault mix':<27} {'requests':>8} {'500/429/hang/bad':>17} {'retries':>7} {'failed':>6} "
          f"{'fmt fail':>8} {'stops':>5} {'run s':>6} {'process s':>9}  same as fault-free")
    with tempfile.TemporaryDirectory() as tmp:
        clean = None
        for index, (label, mix) in enumerate(MIXES.items()):
            row = run_once(mix, args, Path(tmp), f"mix{index}")
            clean = clean or row
            faults = "/".join(str(row["faults"][k]) for k in ("http_500", "http_429", "timeout", "malformed"))
            print(f"{label:<27} {row['requests']:>8} {faults:>17} {row['llm']['retries']:>7} "
                  f"{row['llm']['failures']:>6} {row['format_failures']:>8} {row['stops']:>5} {row['run_seconds']:>6.1f} "
                  f"{row['seconds']:>9.1f}  {'yes' if row['found'] == clean['found'] else 'no'}", flush=True)


if __name__ == "__main__":
    main()
