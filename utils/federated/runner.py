"""What the three training modules share around the round loop: data, engines, the run folder, the summary."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from textgrad import structured
from textgrad.engine import get_engine
from textgrad.serving.runtime import current_runtime
from textgrad.serving.tokenizers import estimate_tokens
from utils.config import UsageError
from utils.privacy.outbound import OutboundPlan
from utils.reporting import progress
from utils.reporting.run_lock import claim_run_folder, holds_a_run
from utils.reporting.run_summary import print_summary
from utils.reporting.tracking import RunLog, open_run_log
from utils.run_config import RunConfig, resolved_config
from utils.tasks.data import TaskData, load_task_data
from utils.tasks.registry import resolve_task

from .aggregation import MERGED_REPLY, merge_limits
from .checkpoint import read_checkpoint
from .client import Engines, LocalSettings, TrainRound
from .experiment import Client, Experiment, starting_prompt
from .merge_tree import MergeLimits
from .phases import storage_failure
from .rounds import run_experiment
from .sampling import role_sampling, sampled
from .screening import ScreenSettings

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
    roles = role_sampling(args.temperature, args.top_p)
    writers = {role: sampled(evaluation, roles[role]) for role in ("feedback", "optimizer", "merge")}
    return Engines(test=sampled(test, roles["answer"]), evaluation=sampled(evaluation, roles["answer"]),
                   judge=sampled(evaluation, roles["judge"]) if args.judge == "llm" else None, **writers)


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
    if not args.resume and holds_a_run(run_dir):  # asked again under the folder's lock, before it is used
        raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it or pick another --run_name")
    experiment = build_experiment(args, data, clients, aggregate)
    if args.resume:  # a damaged checkpoint stops the run before any server starts or any file changes
        read_checkpoint(run_dir, experiment.rounds, [t.name for t in experiment.tasks])
    if args.estimate:  # prices the plan from the engine names alone: no engine is made, no key is needed
        experiment.merge_limits = fit_merges(args, experiment, None)
        from utils.estimate.summary import print_estimate  # only when asked: the estimator is a large import

        print_estimate(args, experiment, run_dir)
        return {}
    engines = make_engines(args)
    experiment.merge_limits = fit_merges(args, experiment, engines)
    with claim_run_folder(run_dir, resume=args.resume):  # one process per run folder, until the run ends
        try:
            results = _run_in_folder(args, experiment, engines, run_dir, make_train_round)
        except OSError as exc:  # a full disk, a read-only folder: one line and the resume command
            raise storage_failure(exc, run_dir) or exc from None
    print_summary(results, run_dir, args)
    return results


def _run_in_folder(args: RunConfig, experiment: Experiment, engines: Engines, run_dir: Path,
                   make_train_round: Callable[[Experiment, Engines, RunLog], TrainRound] | None) -> dict[str, Any]:
    comet_path = Path(args.comet_log_path) if args.comet_log_path else Path(args.output_dir) / "comet"
    try:
        log = open_run_log(run_dir, args.comet_mode, args.comet_project_name, comet_path, resume=args.resume)
    except OSError as exc:  # the up-front check passed, yet the folder cannot be made (full disk, /proc)
        raise UsageError(f"cannot create {exc.filename or run_dir} ({exc.strerror}): choose an --output_dir "
                         "(and --comet_log_path) you can write to") from None

    started = time.time()  # the response cache as it was before the first request is what the estimate sees

    def record_settings() -> None:
        """config.yaml and estimate.json, written while the run's first requests are answered."""
        if not args.resume:
            log.write_config(resolved_config(args))
            from utils.estimate.summary import record_estimate  # a large import, after the first requests

            # What --estimate printed for these flags, which knows a window only from --max_context. Its token
            # estimate may refuse a budget the real tokenizer allowed: the run then records the limits it runs with.
            try:
                printed = fit_merges(args, experiment, None)
            except UsageError:
                printed = experiment.merge_limits
            record_estimate(args, replace(experiment, merge_limits=printed), run_dir, cache_before=started)

    try:
        train_round = make_train_round(experiment, engines, log) if make_train_round else None
        results = run_experiment(experiment, engines, log, resume=args.resume, train_round=train_round,
                                 meanwhile=record_settings)
        if args.plots:
            from utils.reporting.plots import plot_run  # matplotlib: only when asked

            plot_run(results, run_dir / "plots")
    finally:
        log.comet.end()
    return results


def fit_merges(args: RunConfig, exp: Experiment, engines: Engines | None) -> MergeLimits | None:
    """The run's merge limits for its engines' windows (utils.federated.aggregation.merge_limits); a budget too
    large for a merge request is a UsageError. Without engines, as --estimate (which contacts no server) sees
    them: from --max_context, counting tokens with the estimate; None without it."""
    if engines is None and args.max_context is None:
        return None
    if engines is None:
        windows, count, structured_reply = (args.max_context, args.max_context), estimate_tokens, True
    else:
        windows = (engines.test.context_window, engines.evaluation.context_window)
        count = engines.evaluation.count_tokens
        structured_reply = structured.request_format(engines.evaluation, MERGED_REPLY) is not None
    try:
        return merge_limits(count, *windows, exp.aggregate_method, exp.tasks, starting_prompt(exp.tasks, exp.initial_prompt),
                            exp.settings.max_steps, exp.merge_max_tokens, args.max_prompt_tokens, structured_reply)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
        initial_prompt=args.initial_prompt,
        split_sizes={d.task.name: d.sizes for d in data},
        outbound=OutboundPlan.from_args(args, [c.client_id for c in clients]),
        screening=ScreenSettings(args.robust_aggregation, args.screen_size, args.screen_margin),
    )


def experiment_from_args(args: RunConfig) -> Experiment:
    """The experiment main.py runs for these (parsed) flags: data loaded and clients built, no engine."""
    data = load_data(args)
    clients = importlib.import_module(args.module).build_clients(args, data)
    return build_experiment(args, data, clients, aggregate=args.module != "train_centralized")
