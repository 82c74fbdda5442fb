"""How fast a run starts, how fast it ends, the CPU it spends per LLM call, and how close one round comes to
the bound its chain of dependent calls sets; with the default --max_concurrency 16 and with 1, side by side.

    python bench/speed.py [--repeat 3] [--profile DIR] [--skip_sequential]

Every measured run is a fresh process against the bench server (bench/fake_server/) in a process of its
own. The server notes, on the machine's monotonic clock, when the first LLM request arrives and when the
last reply leaves; this process notes when it started the run's process and when that process ended, and
reads the process's CPU seconds (user + system) from wait4. Rows:

  first request    process start -> first LLM request at the server           the small run
  exit             last reply leaves the server -> the process has ended      the small run
  CPU per call     the whole process's CPU seconds / LLM calls (imports too)  the small run
  steady CPU/call  CPU seconds of run_experiment / LLM calls (framework work
                   only: no imports, no plots; one process)                   the ~1000-call run
  one round        process start -> process end, and that / its bound         the one-round run

The small run (3 clients x 2 rounds x 2 steps, batch 3, summarization, split 18,20,20) and the
~1000-call run (5 clients x 4 rounds x 3 steps, split 30,50,50) talk to a server answering in 0.05 s,
the one-round run (3 clients x 3 steps x batch 3, split 18,20,20) to one answering in 0.3 s; both have
16 slots. The bound is latency x the waves of calls that must follow one another (critical_path: read
from the run's plan, utils.federated.plan); with --max_concurrency 1, latency x the requests the server
answered. Wall figures are the smallest of --repeat runs (the machine is shared); CPU figures the
median. Targets are printed beside the figures, not asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import run_in_child, server_call, start_server  # noqa: E402

FAST, SLOW = 0.05, 0.3  # seconds per request of the two servers
SLOTS = 16
COMMON = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--test_engine", "vllm-fake-model",
          "--evaluation_engine", "vllm-fake-model", "--aggregate_method", "summarization", "--batch_size", "3",
          "--comet_mode", "disabled"]
SMALL = [*COMMON, "--homo_split_num", "3", "--max_epochs", "2", "--max_steps", "2", "--split_sizes", "18,20,20"]
ROUND = [*COMMON, "--homo_split_num", "3", "--max_epochs", "1", "--max_steps", "3", "--split_sizes", "18,20,20"]
# The ~1000-call run, as bench.run's in-process case (its experiment is train_homo_fed's, summarization).
STEADY = {"clients": 5, "rounds": 4, "steps": 3, "batch": 3, "val": 50, "test": 50, "seed": 42}


# ---------------------------------------------------------------- the bound


def critical_path(argv: list[str], slots: int) -> tuple[int, str]:
    """Waves of at most `slots` concurrent calls that must follow one another in the run of these flags,
    read from its plan, and how they were counted.

    A local step is four waves (its batch's answers, their feedback, the optimizer call, the re-score),
    side by side over the round's clients; a merge waits for every client, and the measurement of the
    clients' prompts (a log-probability request each, UID) runs beside it; the validation of the merge,
    the measurement of it and (last round) its test run together. The zero-shot evaluation runs beside
    round 1 in the slots its waves leave free; only what does not fit there adds waves. The final test
    repeats the last round's test (the plan assumes the best prompt is the last one)."""
    from utils.config import parse_args
    from utils.federated.plan import plan_run
    from utils.federated.runner import experiment_from_args

    plan = plan_run(experiment_from_args(parse_args(argv)))
    if plan.judge:
        raise ValueError("critical_path counts runs without --judge llm")
    total, spare, parts = 0, 0, []
    for planned in plan.rounds:
        steps = 0
        for index in range(len(planned.clients[0].steps)):
            answers = sum(len(c.steps[index].batch or ()) for c in planned.clients)
            for calls in (answers, answers, len(planned.clients), answers):
                waves = math.ceil(calls / slots)
                steps += waves
                spare += (waves * slots - calls) if planned.index == 1 else 0
        merge = math.ceil((planned.merge + len(planned.clients)) / slots) if planned.merge else 0
        final = planned.validation.calls + 1 + (planned.last_test.calls if planned.last_test else 0)
        total += steps + merge + math.ceil(final / slots)
        parts.append(f"round {planned.index}: {steps} (steps) + {merge} (merge) + {math.ceil(final / slots)} "
                     f"(validation{' and test' if planned.last_test else ''}, {final} calls)")
    zero_shot = math.ceil(max(0, plan.zero_shot_calls - spare) / slots)
    total += zero_shot
    parts.append(f"zero-shot {zero_shot} ({plan.zero_shot_calls} calls, {min(spare, plan.zero_shot_calls)} "
                 "beside round 1)")
    return total, "; ".join(parts)


# ---------------------------------------------------------------- one process of main.py


@dataclass
class ProcessRun:
    first_request_s: float   # process start -> first LLM request at the server
    exit_s: float            # last reply -> process ended
    wall_s: float            # process start -> process ended
    cpu_s: float             # user + system CPU seconds of the process
    calls: int               # LLM requests the server answered (chat and log-probabilities)


def run_main(base_url: str, argv: list[str], out_dir: Path, name: str, prefix: tuple[str, ...] | list[str] = ()
             ) -> ProcessRun:
    """main.py with argv in a fresh process (python's own options before it: prefix), on a response cache
    of its own (cold, as on a first run), timed from outside."""
    server_call(base_url, "/stats/reset", post=True)
    env = {**os.environ, "VLLM_BASE_URL": base_url, "HF_HUB_OFFLINE": "1"}
    argv = [*argv, "--output_dir", str(out_dir), "--run_name", name, "--cache_dir", str(out_dir / f"cache-{name}")]
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, *prefix, "main.py", *argv], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()  # type: ignore[union-attr]  # until the process closes it, at its end
    _, status, usage = os.wait4(process.pid, 0)
    ended = time.monotonic()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"main.py {' '.join(argv)} failed:\n{stderr.decode()[-3000:]}")
    stats = server_call(base_url, "/stats")
    return ProcessRun(stats["first_request_at"] - started, ended - stats["last_reply_at"], ended - started,
                      usage.ru_utime + usage.ru_stime, stats["requests"] + stats["logprob_requests"])


def best_of(runs: list[ProcessRun]) -> ProcessRun:
    """Wall figures: the smallest (least disturbed by other jobs); CPU: the median."""
    return ProcessRun(min(r.first_request_s for r in runs), min(r.exit_s for r in runs), min(r.wall_s for r in runs),
                      statistics.median(r.cpu_s for r in runs), runs[0].calls)


# ---------------------------------------------------------------- orchestration


def measure(args: argparse.Namespace, work: Path, concurrency: int, fast: str, slow: str) -> dict[str, Any]:
    flag = ["--max_concurrency", str(concurrency)]
    figures: dict[str, Any] = {}

    def repeated(name: str, url: str, argv: list[str]) -> tuple[ProcessRun, float]:
        runs, loads = [], []
        for i in range(args.repeat):
            loads.append(os.getloadavg()[0])
            runs.append(run_main(url, [*argv, *flag], work, f"{name}-{concurrency}-{i}"))
        return best_of(runs), max(loads)

    figures["small"], figures["small_load"] = repeated("small", fast, SMALL)
    figures["round"], figures["round_load"] = repeated("round", slow, ROUND)
    if concurrency == 1:  # one request at a time: every request the server answered is on the path
        figures["bound_waves"] = figures["round"].calls
        figures["bound_how"] = f"{figures['round'].calls} requests answered, one after another"
    else:
        figures["bound_waves"], figures["bound_how"] = critical_path(ROUND, min(concurrency, SLOTS))
    figures["steady_load"] = os.getloadavg()[0]
    figures["steady"] = steady_run(fast, work, concurrency)
    return figures


def steady_run(base_url: str, work: Path, concurrency: int, profile: Path | None = None) -> dict[str, Any]:
    """The ~1000-call run in a child process of its own (bench.run's case), optionally profiled."""
    name = f"steady-{concurrency}" + ("-profiled" if profile else "")
    return run_in_child({**STEADY, "base_url": base_url, "max_concurrency": concurrency,
                         "cache_dir": str(work / f"cache-{name}"), "run_dir": str(work / name),
                         "profile": str(profile) if profile else None})


def profile_runs(folder: Path, work: Path, base_url: str) -> list[Path]:
    """CPU profiles (bench.profiling: every thread, by CPU time) of the small run's whole process and of
    the steady-state run, apart from the measured runs: profiling slows a run several times over."""
    small = folder / "small.prof"
    run_main(base_url, [*SMALL, "--max_concurrency", str(SLOTS)], work, "small-profiled",
             prefix=["-m", "bench.profiling", str(small)])
    steady = folder / "steady.prof"
    steady_run(base_url, work, SLOTS, profile=steady)
    return [small, steady]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each main.py case (smallest wall is kept)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also profile the small and the steady-state run (cProfile files in DIR)")
    parser.add_argument("--skip_sequential", action="store_true", help="measure --max_concurrency 16 only")
    args = parser.parse_args()
    if args.repeat < 1:
        print("error: --repeat must be at least 1", file=sys.stderr)
        raise SystemExit(2)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    fast_server, fast = start_server(FAST, SLOTS)
    slow_server, slow = start_server(SLOW, SLOTS)
    work = Path(tempfile.mkdtemp(prefix="fedtextgrad-speed-"))
    try:
        columns = {SLOTS: measure(args, work, SLOTS, fast, slow)}
        if not args.skip_sequential:
            columns[1] = measure(args, work, 1, fast, slow)
        profiles = profile_runs(args.profile, work, fast) if args.profile else []
    finally:
        for server in (fast_server, slow_server):
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)  # the runs' folders and caches: nothing is left in /tmp
    print_table(columns)
    for path in profiles:
        print_hot_spots(path)


def print_table(columns: dict[int, dict[str, Any]]) -> None:
    def cells(show: Any) -> list[str]:
        return [show(figures) for figures in columns.values()]

    rows = [
        ("figure", [f"--max_concurrency {c}" for c in columns], "target"),
        ("first request after process start", cells(lambda f: f"{f['small'].first_request_s:.2f} s"), "<= 0.8 s"),
        ("exit after the last reply", cells(lambda f: f"{f['small'].exit_s:.2f} s"), "<= 0.3 s"),
        ("CPU per call, whole process", cells(lambda f: f"{1000 * f['small'].cpu_s / f['small'].calls:.1f} ms "
                                                         f"({f['small'].cpu_s:.2f} s / {f['small'].calls} calls)"),
         "<= 5 ms"),
        ("  small run: wall, load", cells(lambda f: f"{f['small'].wall_s:.2f} s, load {f['small_load']:.1f}"), ""),
        ("CPU per call, steady state", cells(lambda f: f"{1000 * f['steady']['cpu'] / f['steady']['calls']:.2f} ms "
                                                        f"({f['steady']['cpu']:.2f} s / {f['steady']['calls']} calls)"),
         "<= 2 ms"),
        ("  steady run: wall, load", cells(lambda f: f"{f['steady']['wall']:.2f} s, load {f['steady_load']:.1f}"), ""),
        ("one round: process wall / bound", cells(lambda f: f"{f['round'].wall_s:.2f} s / "
                                                           f"{f['bound_waves'] * SLOW:.2f} s = "
                                                           f"{f['round'].wall_s / (f['bound_waves'] * SLOW):.2f}"),
         "<= 1.2"),
        ("  its bound: waves x 0.3 s", cells(lambda f: f"{f['bound_waves']} waves"), ""),
        ("  its calls, load", cells(lambda f: f"{f['round'].calls} calls, load {f['round_load']:.1f}"), ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    widths = [max(len(row[1][i]) for row in rows) for i in range(len(columns))]
    for name, values, target in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(values, widths, strict=True))
              + f"  {target}")
    for concurrency, figures in columns.items():
        print(f"bound at --max_concurrency {concurrency}: {figures['bound_how']}")


def print_hot_spots(path: Path, top: int = 15) -> None:
    import pstats

    print(f"\nhot spots of {path} (functions by their own CPU time, profiled):")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    main()
