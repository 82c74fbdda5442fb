"""How long --estimate takes as a run grows: the seconds of estimate_run (no LLM is called) for a homogeneous
run of 3 clients x 3 steps with 3 to 10,000 rounds, and for a wide one (100 clients x 50 steps).

    python bench/estimate_scale.py

A run of more than utils.estimate.walk.WALK_BUDGET requests is counted from a walk of its first rounds
(and steps) and scaled: past that size the time stops growing with the number of rounds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from utils.config import parse_args  # noqa: E402
from utils.estimate.cost import estimate_run  # noqa: E402
from utils.federated.runner import build_experiment, load_data  # noqa: E402

BASE = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--test_engine", "vllm-fake-model",
        "--evaluation_engine", "vllm-fake-model", "--no_cache", "--output_dir", str(REPO_ROOT / "logs" / "none")]
GRIDS = {f"{r} rounds": ["--max_epochs", str(r)] for r in (3, 100, 1000, 10000)}
GRIDS["100 clients x 50 steps x 1000 rounds"] = ["--max_epochs", "1000", "--homo_split_num", "100", "--max_steps",
                                                 "50", "--split_sizes", "1000,10,10"]


def main() -> None:
    import train_homo_fed

    print(f"{'run':<40} {'seconds':>8} {'calls':>14}  walked")
    for name, flags in GRIDS.items():
        args = parse_args([*BASE, *flags])
        data = load_data(args)
        experiment = build_experiment(args, data, train_homo_fed.build_clients(args, data), aggregate=True)
        started = time.perf_counter()
        estimate = estimate_run(args, experiment, Path(args.output_dir) / "none")
        seconds = time.perf_counter() - started
        walked = "all" if not estimate.notes else estimate.notes[0].split("walked ", 1)[1].split(",")[0]
        print(f"{name:<40} {seconds:>8.2f} {estimate.total['calls'] + estimate.total['cached']:>14,}  {walked}")


if __name__ == "__main__":
    main()
