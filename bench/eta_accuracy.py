"""How close a run's estimated time comes to the time it took.

Runs the quickstart config (or --config) once per seed with a fresh response cache, and prints one row per
run: the whole run's time as estimated after the zero-shot evaluation and after round 1 (the `estimate`
events of events.jsonl), against the time it took (results.json's wall_seconds, which the estimates
estimate: the round loop's time, from the zero-shot evaluation to results.json), with the error of each:

    python bench/eta_accuracy.py                        # the quickstart, seed 42
    python bench/eta_accuracy.py --seeds 42 43 44

The machine's load average is printed with the figures: on a shared machine a run's pace changes with
the load, and no estimate made at round 1 can know what the load will be in round 2.
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

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str, seed: int, workdir: Path, extra: list[str]) -> tuple[dict, list[dict]]:
    """(results.json, the estimate events) of one run with a fresh response cache."""
    name = f"eta-seed{seed}"
    command = [sys.executable, str(REPO / "main.py"), "--config", config, "--seed", str(seed),
               "--output_dir", str(workdir / "runs"), "--run_name", name,
               "--cache_dir", str(workdir / f"cache-{name}"), "--comet_mode", "disabled", *extra]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    run_dir = workdir / "runs" / name
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    return json.loads((run_dir / "results.json").read_text()), [e for e in events if e["type"] == "estimate"]


def _cell(estimates: list[dict], after_round: int, real: float) -> str:
    estimate = next((e["seconds"] for e in estimates if e.get("after_round", 0) == after_round), None)
    return "-" if estimate is None else f"{estimate:.0f} s ({100 * (estimate - real) / real:+.0f}%)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args, extra = parser.parse_known_args(argv)
    print(f"{Path(args.config).name}, {os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| seed | estimate after zero-shot | estimate after round 1 | real | load average before, after |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fedtextgrad-eta-") as tmp:
        for seed in args.seeds:
            before = os.getloadavg()[0]
            results, estimates = run_once(args.config, seed, Path(tmp), extra)
            real = results["wall_seconds"]
            print(f"| {seed} | {_cell(estimates, 0, real)} | {_cell(estimates, 1, real)} | {real:.0f} s "
                  f"| {before:.1f}, {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
