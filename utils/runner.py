"""What the three training modules share around the round loop: data, engines, the run folder, the summary."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textgrad.engine import get_engine
from textgrad.serving.runtime import current_runtime

from . import progress
from .client import Engines, LocalSettings
from .config import UsageError, resolved_config
from .data import TaskData, load_task_data
from .estimate_summary import print_estimate, record_estimate
from .outbound import OutboundPlan
from .plots import plot_run
from .rounds import Client, Experiment, TrainRound, run_experiment
from .run_config import RunConfig
from .screening import ScreenSettings
from .tasks import resolve_task
from .tracking import RunLog, open_run_log

BuildClients = Callable[[RunConfig, list[TaskData]], list[Client]]


def default_run_name(args: RunConfig) -> str:
    method = args.aggregate_method if args.module != "train_centralized" else "central"
    return f"{args.module}-{'+'.join(args.task)}-{method}-seed{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def with_run_name(args: RunConfig) -> RunConfig:
    """args with its --run_name, or with a generated one (module, tasks, method, seed, time) if none was given."""
    return args if args.run_name else replace(args, run_name=default_run_name(args))


def load_data(args: RunConfig) -> list[TaskData]:
    sizes = None if args.split_sizes is None else tuple(args.split_sizes)
    return [load_task_data(resolve_task(name), args.data_dir, sizes, args.seed) for name in args.task]


def make_engines(args: RunConfig, check: bool = True) -> Engines:
    """The run's engines; with check, each endpoint is asked once whether it serves (the embedded one is
    started). Without, only names, keys and routes are checked: nothing is contacted."""
    runtime = current_runtime()
    runtime.configure(use_cache=not args.no_cache, max_concurrency=args.max_concurrency)
    if args.local_servers is not None:
        runtime.configure(local_servers=args.local_servers)
    if args.cache_dir is not None:  # otherwise keep the runtime's default (or a caller's choice)
        runtime.configure(cache_dir=args.cache_dir)
    if args.request_timeout is not None:
        runtime.configure(request_timeout=args.request_timeout)
    runtime.configure(max_context=args.max_context)
    runtime.reply_formats.configure(args.structured_output)
    test = get_engine(args.test_engine)
    evaluation = get_engine(args.evaluation_engine)
    embedded = "local" in (args.test_engine, args.evaluation_engine) and not os.environ.get("LOCAL_BASE_URL")
    desc = "starting the embedded llama.cpp server" if embedded else "checking the LLM endpoints"
    with progress.current().phase("server_startup", desc, None):
        for engine in dict.fromkeys([test, evaluation]) if check else ():
            engine.check_available()
    return Engines(test=test, evaluation=evaluation, judge=evaluation if args.judge == "llm" else None)


def run_module(args: RunConfig, build_clients: BuildClients, aggregate: bool,
               make_train_round: Callable[[Experiment, Engines, RunLog], TrainRound] | None = None) -> dict[str, Any]:
    """Everything is checked (data, clients, engines, run folder) before the first file is written.

    make_train_round swaps the in-process clients for a transport (Flower)."""
    with progress.run_console():
        return _run_module(args, build_clients, aggregate, make_train_round)


def _run_module(args: RunConfig, build_clients: BuildClients, aggregate: bool,
                make_train_round: Callable[[Experiment, Engines, RunLog], TrainRound] | None) -> dict[str, Any]:
    data = load_data(args)
    try:
        clients = build_clients(args, data)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    args = with_run_name(args)
    run_dir = Path(args.output_dir) / args.run_name
    if not args.resume and run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it or pick another --run_name")
    experiment = build_experiment(args, data, clients, aggregate)
    engines = make_engines(args, check=not args.estimate)
    if args.estimate:
        print_estimate(args, experiment, run_dir)
        return {}
    comet_path = Path(args.comet_log_path) if args.comet_log_path else Path(args.output_dir) / "comet"
    try:
        log = open_run_log(run_dir, args.comet_mode, args.comet_project_name, comet_path, resume=args.resume)
    except OSError as exc:  # the up-front check passed, yet the folder cannot be made (full disk, /proc)
        raise UsageError(f"cannot create {exc.filename or run_dir} ({exc.strerror}): choose an --output_dir "
                         "(and --comet_log_path) you can write to") from None
    try:
        if not args.resume:
            log.write_config(resolved_config(args))
            record_estimate(args, experiment, run_dir)
        train_round = make_train_round(experiment, engines, log) if make_train_round else None
        results = run_experiment(experiment, engines, log, resume=args.resume, train_round=train_round)
        plot_run(results, run_dir / "plots")
    finally:
        log.comet.end()
    print_summary(results, run_dir)
    return results


def build_experiment(args: RunConfig, data: list[TaskData], clients: list[Client],
                     aggregate: bool) -> Experiment:
    return Experiment(
        module=args.module,
        tasks=[d.task for d in data],
        clients=clients,
        val_sets={d.task.name: (d.task, d.val) for d in data},
        test_sets={d.task.name: (d.task, d.test) for d in data},
        aggregate_method=args.aggregate_method if aggregate else None,
        rounds=args.max_epochs,
        clients_per_round=args.clients_per_round or len(clients),
        settings=LocalSettings(max_steps=args.max_steps, batch_size=args.batch_size,
                               proximal_update=args.proximal_update, seed=args.seed,
                               answer_max_tokens=args.max_tokens, feedback_max_tokens=args.feedback_max_tokens,
                               optimizer_max_tokens=args.optimizer_max_tokens, optimizer=args.optimizer,
                               momentum_window=args.momentum_window),
        merge_max_tokens=args.merge_max_tokens,
        run_larger_model=not args.do_not_run_larger_model and args.evaluation_engine != args.test_engine,
        split_sizes={d.task.name: d.sizes for d in data},
        outbound=OutboundPlan.from_args(args, [c.client_id for c in clients]),
        screening=ScreenSettings(args.robust_aggregation, args.screen_size, args.screen_margin),
    )


def experiment_from_args(args: RunConfig) -> Experiment:
    """The experiment main.py runs for these (parsed) flags: data loaded and clients built, no engine."""
    data = load_data(args)
    clients = importlib.import_module(args.module).build_clients(args, data)
    return build_experiment(args, data, clients, aggregate=args.module != "train_centralized")


def _fmt(scores: dict[str, float] | None) -> str:
    if not scores:
        return "-"
    if len(scores) == 2:  # one task and its mean
        return f"{scores['mean']:.3f}"
    return f"{scores['mean']:.3f} (" + ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if k != "mean") + ")"


def _splits(results: dict[str, Any]) -> str:
    sizes = results.get("split_sizes") or {}
    if not sizes:
        return "-"
    return ", ".join(f"{task} {s['train']}/{s['val']}/{s['test']}" for task, s in sizes.items()) + " (train/val/test)"


def _context_line(results: dict[str, Any]) -> str:
    context = results.get("context") or {}
    windows = ", ".join(f"{name} {w['tokens']} ({w['source']})" for name, w in context.get("windows", {}).items())
    return (f"context        window {windows or '-'}; {context.get('shortened_requests', 0)} requests shortened, "
            f"{context.get('overflow_replies', 0)} overflow replies, {context.get('skipped_calls', 0)} calls skipped")


def _defence_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    leak = results.get("leakage")
    if leak:
        lines.append(f"leakage        longest copied run {leak['max_longest_run']} words sent "
                     f"({leak['max_written_longest_run']} written), shingle share {leak['max_shingle_share']:.3f}; "
                     f"guard redacted {leak['redacted_updates']}, rejected {leak['rejected_updates']} updates")
    screen = results.get("screening")
    if screen:
        left_out = "; ".join(f"round {r}: {', '.join(c)}" for r, c in screen["left_out"].items() if c) or "none"
        lines.append(f"screening      {screen['requests']} answers ({screen['llm_calls']} LLM calls); "
                     f"left out {left_out}")
    return lines


def _by_kind(failures: dict[str, int], prefix: str) -> str:
    counts = {k[len(prefix):]: n for k, n in failures.items() if k.startswith(prefix)}
    named = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
    return f"{sum(counts.values())}" + (f" ({named})" if named else "")


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    llm = results["llm"]
    ff = results["format_failures"]
    lines = [
        f"== {results['module']} on {', '.join(results['tasks'])} "
        f"({results['aggregate_method'] or 'no aggregation'}), {results['rounds_completed']} rounds ==",
        f"splits         {_splits(results)}",
        f"zero-shot      val {_fmt(results['zero_shot']['val'])}   test {_fmt(results['zero_shot']['test'])}",
        *[f"round {r['round']:<3}      val {_fmt(r['val'])}   aggregate {r['aggregate_tokens']} tokens, "
          f"{r['accepted_steps']}/{r['steps']} steps kept, {r.get('skipped_steps', 0)} skipped (context)"
          for r in results["rounds"]],
        f"best (round {results['best']['round']})  val {results['best']['val']:.3f}",
        f"final test     last {_fmt(results['final_test']['last'])}   best {_fmt(results['final_test']['best'])}",
        f"LLM            {llm['calls']} calls, {llm['prompt_tokens']}+{llm['completion_tokens']} tokens, "
        f"cache {llm['cache_hits']} hits / {llm['cache_misses']} misses, {llm['retries']} retries",
        f"format fails   optimizer {_by_kind(ff, 'optimizer_')}; merge {_by_kind(ff, 'aggregation_')}; "
        f"judge {ff['judge']}; steps skipped (context) {ff['skipped_steps']}",
        _context_line(results),
        *_defence_lines(results),
        f"wall time      {results['wall_seconds']:.1f} s",
        f"outputs        {run_dir}",
    ]
    print("\n".join(lines), flush=True)
