"""How good is `main.py --estimate`? Estimates against real runs on the bench server.

    python bench/estimate_accuracy.py [--latency 0.02] [--data_dir ../shared/data]

For the quickstart (configs/quickstart.yaml) and one paper-size cell (PAPER_CELL: BBH object counting
50/100/100, 3 clients, 3 rounds of 3 steps, sum_uid, our token limits), both on the bench server
(vllm-fake-model for both engines), it prints:
- calls: the a-priori estimate (its costlier branch in brackets), the count given the decisions the
  finished run recorded (utils.estimate.requests.Outcomes.from_run), and the requests the server counted;
- tokens: the estimate before any run of the engine exists (token limits), after one calibrating run,
  and the run's measured tokens;
- time: the estimate after calibration and the run's wall time.
Calibrating runs: the quickstart calibrates the paper cell; the paper cell with --seed 43 is calibrated by
both. Every run writes to a fresh temporary folder with its own response cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import server_call, start_server  # noqa: E402

ENGINES = ["--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model"]


def _main(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *argv], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"main.py {' '.join(argv)} failed: {done.stderr[-2000:]}")


def estimate(argv: list[str], env: dict[str, str], path: Path) -> dict[str, Any]:
    _main([*argv, "--estimate", "--estimate_json", str(path)], env)
    return json.loads(path.read_text())


def count_given_outcomes(argv: list[str], run_dir: Path) -> int:
    from utils.config import parse_args
    from utils.estimate.outcomes import Outcomes
    from utils.estimate.requests import PlanSpec, plan_calls
    from utils.federated.plan import plan_run
    from utils.federated.runner import experiment_from_args

    args = parse_args(argv)
    exp = experiment_from_args(args)
    spec = PlanSpec(experiment=exp, plan=plan_run(exp, judge=args.judge == "llm"), test_engine=args.test_engine,
                    evaluation_engine=args.evaluation_engine, use_cache=not args.no_cache,
                    logprobs=True, count_tokens=len, completion=dict.fromkeys(("answer", "feedback", "optimizer",
                                                                               "merge", "judge"), 1))
    return plan_calls(spec, Outcomes.from_run(run_dir)).calls()


def _tokens(record: dict[str, Any]) -> int:
    return record["prompt_tokens"] + record["completion_tokens"]


def measure(name: str, argv: list[str], env: dict[str, str], root: Path, uncalibrated: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Estimate (calibrated by the runs under root/logs so far), run, count."""
    cell = [*argv, *ENGINES, "--output_dir", str(root / "logs"), "--run_name", name, "--cache_dir",
            str(root / f"cache-{name}"), "--comet_mode", "disabled"]
    before = estimate(cell, env, root / f"{name}.json")
    server_call(env["VLLM_BASE_URL"], "/stats/reset", post=True)
    _main(cell, env)
    run_dir = root / "logs" / name
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "name": name, "estimate": before, "uncalibrated": uncalibrated or before,
        "given_outcomes": count_given_outcomes(cell, run_dir), "server_requests": server_call(env["VLLM_BASE_URL"], "/stats")["requests"],
        "calls": results["llm"]["calls"], "tokens": _tokens(results["llm"]), "wall": results["wall_seconds"],
    }


def report(row: dict[str, Any]) -> str:
    est, raw = row["estimate"], row["uncalibrated"]
    extra = sum(c["calls"] for c in est["conditional"])
    calibrated = _tokens(est["total"])
    source = next(iter(est["engines"].values()))["completion_source"].split(" under ")[0]
    seconds = "unknown" if est["seconds"] is None else f"{est['seconds']:.1f} s"
    return "\n".join([
        f"{row['name']}:",
        f"  calls   estimate {est['total']['calls']} (+{extra} if an earlier prompt validates best), given the "
        f"run's outcomes {row['given_outcomes']}, actual {row['calls']} (server counted {row['server_requests']})",
        f"  tokens  estimate at the token limits {_tokens(raw['total']):,}, calibrated {calibrated:,} "
        f"({source}), actual {row['tokens']:,}: calibrated/actual = {calibrated / row['tokens']:.2f}",
        f"  time    estimate {seconds}, actual wall {row['wall']:.1f} s",
    ])


# A paper-size homogeneous cell at our default settings (the figures in docs/benchmarks.md were measured on it).
PAPER_CELL = ["--module", "train_homo_fed", "--task", "BBH_object_counting", "--homo_split_num", "3", "--partition",
              "iid", "--batch_size", "3", "--max_epochs", "3", "--max_steps", "3", "--aggregate_method", "sum_uid",
              "--seed", "42"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the bench server takes per request")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    quickstart = ["--config", str(REPO_ROOT / "configs" / "quickstart.yaml")]
    paper = [*PAPER_CELL, "--data_dir", args.data_dir]
    server, base_url = start_server(args.latency, 16)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VLLM_", "COMET_"))},
                   "VLLM_BASE_URL": base_url, "HF_HUB_OFFLINE": "1", "FEDTEXTGRAD_UID": "1"}
            paper_cold = estimate([*paper, *ENGINES, "--output_dir", str(root / "empty"), "--run_name", "p"], env,
                                  root / "paper-cold.json")
            rows = [measure("quickstart", quickstart, env, root),
                    measure("paper_cell", paper, env, root, uncalibrated=paper_cold),
                    measure("paper_cell_seed43", [*paper, "--seed", "43"], env, root, uncalibrated=paper_cold)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"bench server: latency {args.latency} s, 16 slots; engines vllm-fake-model")
    for row in rows:
        print(report(row))


if __name__ == "__main__":
    main()
