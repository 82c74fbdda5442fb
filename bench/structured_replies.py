"""Usable optimizer replies and kept steps per 100 optimizer calls, with structured replies and with tags.

Runs the quickstart config (SmolLM2-135M-Instruct on the embedded llama.cpp server, unless the config
says otherwise) once per seed with `--structured_output on` and once with `off`, each with a fresh
response cache (or one shared `--cache_dir`), and prints one row per mode from the runs' results.json:

    python bench/structured_replies.py                      # the quickstart, seed 42
    python bench/structured_replies.py --seeds 42 43 44     # more optimizer calls per row

A usable reply is one that gave a new prompt (not no_tags, unparseable_json, empty or truncated);
steps skipped because their requests could not fit the context window are left out of the calls.
The machine's load average is printed with the figures: on a shared machine wall times vary with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `utils` importable
    sys.path.insert(0, str(REPO))

from utils.tasks.registry import STARTING_INSTRUCTIONS  # noqa: E402

REPLY_FAILURES = ("no_tags", "unparseable_json", "empty", "truncated")


@dataclass
class Row:
    mode: str
    calls: int = 0
    usable: int = 0
    kept: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPLY_FAILURES, 0))
    changed_runs: int = 0
    runs: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, results: dict) -> None:
        failures = results["format_failures"]
        overflowed = sum(r["optimizer_failures"].get("context_overflow", 0) for r in results["rounds"])
        calls = results["steps"]["total"] - overflowed
        unusable = sum(failures[f"optimizer_{kind}"] for kind in REPLY_FAILURES)
        self.calls += calls
        self.usable += calls - unusable
        self.kept += results["steps"]["accepted"]
        for kind in REPLY_FAILURES:
            self.failures[kind] += failures[f"optimizer_{kind}"]
        self.runs += 1
        self.changed_runs += results["final_prompt"].strip() != STARTING_INSTRUCTIONS
        self.seconds.append(results["wall_seconds"])

    def per_100(self, n: int) -> str:
        return f"{100 * n / self.calls:.0f}" if self.calls else "-"


def run_once(config: str, mode: str, seed: int, workdir: Path, cache_dir: str | None, extra: list[str]) -> dict:
    name = f"{mode}-seed{seed}"
    command = [sys.executable, str(REPO / "main.py"), "--config", config, "--structured_output", mode,
               "--seed", str(seed), "--output_dir", str(workdir / "runs"), "--run_name", name,
               "--cache_dir", cache_dir or str(workdir / f"cache-{name}"), "--comet_mode", "disabled", *extra]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return json.loads((workdir / "runs" / name / "results.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off", "auto"])
    parser.add_argument("--cache_dir", default=None,
                        help="one response cache for every run (requests both modes share are paid once; wall "
                             "times then are not comparable); default: a fresh cache per run")
    args, extra = parser.parse_known_args(argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtextgrad-structured-") as tmp:
        for mode in args.modes:
            row = Row(mode)
            for seed in args.seeds:
                row.add(run_once(args.config, mode, seed, Path(tmp), args.cache_dir, extra))
            rows.append(row)
    load_after = os.getloadavg()
    print(f"{Path(args.config).name}, seeds {' '.join(map(str, args.seeds))}; load average (1 min) "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| structured_output | optimizer calls | usable per 100 | kept steps per 100 | unusable by kind "
          "| runs whose final prompt changed | wall s per run |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        kinds = ", ".join(f"{kind} {n}" for kind, n in row.failures.items() if n) or "none"
        seconds = ", ".join(f"{s:.0f}" for s in row.seconds)
        print(f"| {row.mode} | {row.calls} | {row.per_100(row.usable)} | {row.per_100(row.kept)} | {kinds} "
              f"| {row.changed_runs} of {row.runs} | {seconds} |")


if __name__ == "__main__":
    main()
