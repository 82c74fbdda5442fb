"""Speed benchmark: one homogeneous FedTextGrad round against the latency server, and what bounds it.

    python bench/run.py [--latency 0.3] [--slots 16] [--max_concurrency 16] [--scale_clients 50]

The server runs in its own process, and every measured run in a fresh child process, so CPU
seconds and peak RSS are the framework's own. Runs: concurrent (--max_concurrency), sequential
(max_concurrency 1), a re-run of the finished concurrent experiment on its warm cache, and a
scale run (--scale_clients clients x 1 step). Targets are printed next to the figures, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from bench.profiling import threads_profiled  # noqa: E402

TASK = "synthetic_object_counting"
ENGINE = "vllm-fake-model"


# ---------------------------------------------------------------- the critical path


def dependent_calls(max_steps: int) -> tuple[int, str]:
    """LLM calls that must follow one another in a one-round experiment, and how they were counted."""
    per_step = 4  # forward, feedback, optimizer, re-score
    total = 1 + per_step * max_steps + 1 + 1 + 1
    return total, (f"zero-shot val+test 1 + {per_step} per step (forward, feedback, optimizer, re-score) "
                   f"x {max_steps} steps + aggregate 1 + validation 1 + final test 1 = {total}")


# ---------------------------------------------------------------- one measured run (child process)


def build_experiment(clients: int, steps: int, batch: int, val: int, test: int, seed: int, rounds: int = 1) -> Any:
    """A homogeneous synthetic-counting experiment with summarization, as train_homo_fed builds it."""
    from utils.federated.client import LocalSettings
    from utils.federated.experiment import Client, Experiment
    from utils.federated.partition import iid_partition
    from utils.tasks.data import load_task_data
    from utils.tasks.registry import resolve_task

    data = load_task_data(resolve_task(TASK), None, (clients * batch * 2, val, test), seed)
    shards = iid_partition(data.train, clients, seed)
    return Experiment(
        module="train_homo_fed", tasks=[data.task],
        clients=[Client(f"client{i}", data.task, shard) for i, shard in enumerate(shards)],
        val_sets={data.task.name: (data.task, data.val)}, test_sets={data.task.name: (data.task, data.test)},
        aggregate_method="summarization", rounds=rounds, clients_per_round=clients,
        settings=LocalSettings(max_steps=steps, batch_size=batch, seed=seed), run_larger_model=False,
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    os.environ["VLLM_BASE_URL"] = case["base_url"]
    from textgrad.engine import get_engine
    from textgrad.serving.runtime import current_runtime
    from utils.federated.client import Engines
    from utils.federated.rounds import run_experiment
    from utils.reporting.tracking import open_run_log

    current_runtime().configure(cache_dir=case["cache_dir"], max_concurrency=case["max_concurrency"])
    engine = get_engine(ENGINE)
    engine.check_available()
    experiment = build_experiment(case["clients"], case["steps"], case["batch"], case["val"], case["test"],
                                  case["seed"], case.get("rounds", 1))
    log = open_run_log(Path(case["run_dir"]), "disabled", "bench", Path(case["run_dir"]) / "comet")
    # Profiled (bench --profile): every thread's CPU, which makes the run slower.
    profiled = threads_profiled(case["profile"]) if case.get("profile") else contextlib.nullcontext()
    cpu_before, started = cpu_seconds(), time.perf_counter()
    with profiled:
        results = run_experiment(experiment, Engines(test=engine, evaluation=engine), log)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    return {
        "wall": wall, "cpu": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "framework_calls": results["llm"]["calls"], "cache_hits": results["llm"]["cache_hits"],
        "final_prompt": results["final_prompt"], "zero_shot": results["zero_shot"],
        "val": [r["val"] for r in results["rounds"]], "final_test": results["final_test"],
    }


# ---------------------------------------------------------------- orchestration (parent process)


def start_server(latency: float, slots: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "bench.fake_server", "--port", "0",
                                "--latency", str(latency), "--slots", str(slots)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    url = process.stdout.readline().strip()  # type: ignore[union-attr]
    if not url.startswith("http"):
        process.kill()
        raise SystemExit("the bench server did not start")
    return process, url


def server_call(base_url: str, route: str, post: bool = False) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(root + route, data=b"{}" if post else None, method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def run_in_child(case: dict[str, Any]) -> dict[str, Any]:
    server_call(case["base_url"], "/stats/reset", post=True)
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)],
                           capture_output=True, text=True, cwd=REPO_ROOT)
    if child.returncode != 0:
        raise SystemExit(f"benchmark run failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    stats = server_call(case["base_url"], "/stats")
    # Log-probability requests (UID measures of prompts) are model calls too.
    result["calls"] = stats["requests"] + stats["logprob_requests"]
    result["peak_in_flight"] = stats["peak_in_flight"]
    result["calls_by_kind"] = {**stats["requests_by_kind"], "logprobs": stats["logprob_requests"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per request at the server")
    parser.add_argument("--slots", type=int, default=16, help="requests the server serves at once")
    parser.add_argument("--max_concurrency", type=int, default=16)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--scale_clients", type=int, default=50, help="0 skips the scale run")
    parser.add_argument("--skip_sequential", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measured run, JSON out
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    report(args)


def report(args: argparse.Namespace) -> None:
    server, base_url = start_server(args.latency, args.slots)
    work = Path(tempfile.mkdtemp(prefix="fedtextgrad-bench-"))
    try:
        base = {"base_url": base_url, "clients": args.clients, "steps": args.steps, "batch": args.batch,
                "val": args.val, "test": args.test, "seed": args.seed}

        def case(name: str, cache: str, **overrides: Any) -> dict[str, Any]:
            return {**base, "max_concurrency": args.max_concurrency, "cache_dir": str(work / cache),
                    "run_dir": str(work / name), **overrides}

        concurrent = run_in_child(case("concurrent", "cache"))
        rerun = run_in_child(case("rerun", "cache"))
        sequential = None if args.skip_sequential else run_in_child(case("sequential", "cache-seq", max_concurrency=1))
        scale = (run_in_child(case("scale", "cache-scale", clients=args.scale_clients, steps=1))
                 if args.scale_clients else None)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)  # the runs' folders and caches: nothing is left in /tmp
    print_table(args, concurrent, rerun, sequential, scale)


def print_table(args: argparse.Namespace, concurrent: dict, rerun: dict, sequential: dict | None,
                scale: dict | None) -> None:
    levels, how = dependent_calls(args.steps)
    bound = args.latency * levels
    rows = [
        ("setting", f"{args.clients} clients x {args.steps} steps, batch {args.batch}, val {args.val}, "
                    f"test {args.test}; latency {args.latency} s, {args.slots} slots, "
                    f"max_concurrency {args.max_concurrency}"),
        ("LLM calls", f"{concurrent['calls']}  {concurrent['calls_by_kind']}"),
        ("peak in flight", f"{concurrent['peak_in_flight']}"),
        ("wall", f"{concurrent['wall']:.2f} s"),
        ("critical path", f"{bound:.2f} s = {args.latency} s x {levels} dependent calls ({how})"),
        ("wall / bound", f"{concurrent['wall'] / bound:.2f}   (target <= 1.3)"),
    ]
    if sequential is not None:
        same = (sequential["final_prompt"] == concurrent["final_prompt"]
                and sequential["val"] == concurrent["val"] and sequential["final_test"] == concurrent["final_test"])
        rows += [
            ("max_concurrency 1", f"{sequential['wall']:.2f} s, {sequential['calls']} calls"),
            ("speed-up", f"{sequential['wall'] / concurrent['wall']:.1f}x   (target >= 8x)"),
            ("same results", "yes" if same else "NO: prompts or accuracies differ"),
        ]
    rows += [
        ("framework CPU", f"{concurrent['cpu']:.2f} s = {100 * concurrent['cpu'] / concurrent['wall']:.1f}% "
                          f"of wall   (target <= 5%)"),
        ("peak RSS", f"{concurrent['peak_rss_mb']:.0f} MB"),
        ("warm-cache re-run", f"{rerun['calls']} calls, {rerun['wall']:.3f} s = "
                              f"{100 * rerun['wall'] / concurrent['wall']:.1f}% of the first run   "
                              f"(target 0 calls, < 5%)"),
    ]
    if scale is not None:
        scale_levels, _ = dependent_calls(1)
        rows += [
            (f"scale: {args.scale_clients} clients x 1 step",
             f"{scale['calls']} calls, {scale['wall']:.2f} s wall (bound {args.latency * scale_levels:.2f} s "
             f"by dependencies, throughput floor {scale['calls'] * args.latency / args.slots:.2f} s), "
             f"CPU {scale['cpu']:.2f} s, peak RSS {scale['peak_rss_mb']:.0f} MB   (target < 500 MB)"),
        ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
