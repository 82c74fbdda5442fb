"""The server side: the round loop shared by all three training modules.

A round: send the global prompt to the chosen clients -> each runs its local steps -> merge the
returned prompts -> validate the merge -> keep the best so far -> the merge is the next global prompt.
"""

from __future__ import annotations

import contextvars
import functools
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tqdm import tqdm

from textgrad import local_server, structured
from textgrad.budget import context_results
from textgrad.engine import ChatEngine, all_engine_stats
from textgrad.errors import EngineError
from textgrad.parallel import run_concurrently
from textgrad.slots import background
from textgrad.stats import metered
from textgrad.structured import CONTEXT_OVERFLOW, REPLY_FAILURES

from . import progress
from .aggregation import aggregate_prompts
from .client import ClientUpdate, Engines, LocalSettings, train_client
from .evaluation import evaluate_on_tasks
from .leakage import leakage_results, record_leakage
from .outbound import OutboundPlan, release_update
from .prompt_stats import measure_prompt, token_count
from .screening import ScreenSettings, record_screening, screen_updates, screening_results
from .tasks import Example, TaskSpec, served_prompt
from .tracking import RunLog

EvalSets = dict[str, tuple[TaskSpec, list[Example]]]
# (client ids, global prompt, round) -> one update per client id, in the same order. In-process
# simulation and Flower each provide one.
TrainRound = Callable[[list[str], str, int], list[ClientUpdate]]


T = TypeVar("T")
# The engine already retried each call (about 15 s for a refused connection); one more try of the whole
# phase after this pause rides out a server restart, its finished calls coming from the cache. An
# endpoint that still answers (a call ran out of retries at a high error rate) gets up to PHASE_TRIES.
PHASE_RETRY_WAIT_S = 5.0
PHASE_TRIES = 3


class RoundFailed(RuntimeError):
    """No client of a round returned a prompt; the run stops at its last checkpoint."""


class RunStopped(RoundFailed):
    """The LLM endpoint failed a phase twice mid-run; the run stopped at its last checkpoint, resumable."""


@dataclass
class Client:
    client_id: str
    task: TaskSpec
    examples: list[Example]


@dataclass
class Experiment:
    module: str
    tasks: list[TaskSpec]
    clients: list[Client]
    val_sets: EvalSets
    test_sets: EvalSets
    aggregate_method: str | None  # None: a single client whose prompt is the global prompt
    rounds: int
    clients_per_round: int
    settings: LocalSettings
    merge_max_tokens: int = 768
    run_larger_model: bool = True
    # task name -> {"train", "val", "test"}: the split sizes used (small BBH subtasks shrink the paper's)
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    # Leak guard and simulated attackers (client side), screened aggregation (server side): issue 16.
    outbound: OutboundPlan = field(default_factory=OutboundPlan)
    screening: ScreenSettings = field(default_factory=ScreenSettings)


def starting_prompt(tasks: list[TaskSpec]) -> str:
    """The trained text every run starts from: instructions only, the same for every task."""
    return tasks[0].starting_prompt()


def served_prompts(prompt: str, tasks: list[TaskSpec]) -> dict[str, str]:
    """The trained text as each task's questions are answered with it."""
    return {task.name: served_prompt(prompt, task) for task in tasks}


def reply_failures(kinds: list[str | None]) -> dict[str, int]:
    """Counts of each way an optimizer or merge reply can be unusable (every kind listed, zeros too)."""
    return {kind: kinds.count(kind) for kind in (*REPLY_FAILURES, CONTEXT_OVERFLOW)}


def select_clients(client_ids: list[str], per_round: int, seed: int, round_index: int) -> list[str]:
    """A seeded choice per round, returned in client order (the order aggregation sees)."""
    if per_round >= len(client_ids):
        return list(client_ids)
    chosen = set(random.Random(f"{seed}:select:{round_index}").sample(client_ids, per_round))
    return [c for c in client_ids if c in chosen]


def train_in_process(clients: list[Client], engines: Engines, settings: LocalSettings,
                     on_step: Callable[[], None] | None = None, outbound: OutboundPlan | None = None) -> TrainRound:
    by_id = {c.client_id: c for c in clients}
    outbound = outbound or OutboundPlan()

    def train_one(client: Client, prompt: str, round_index: int) -> ClientUpdate:
        try:
            update = train_client(client.client_id, client.task, client.examples, prompt, round_index, engines,
                                  settings, on_step=on_step)
        except Exception as exc:  # one failing client must not stop the round
            update = ClientUpdate(client.client_id, round_index, prompt, prompt, error=f"{type(exc).__name__}: {exc}")
        return release_update(update, client.examples, outbound.for_client(client.client_id))

    def train_round(client_ids: list[str], prompt: str, round_index: int) -> list[ClientUpdate]:
        return run_concurrently([lambda c=by_id[cid]: train_one(c, prompt, round_index) for cid in client_ids])

    return train_round


def llm_totals() -> dict[str, int]:
    """Every engine counter summed over engines (calls, tokens, cache hits, retries, ...)."""
    totals = dict.fromkeys(("calls", "prompt_tokens", "completion_tokens", "cache_hits", "cache_misses",
                            "retries"), 0)
    for stats in all_engine_stats().values():
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items()}


def _add(total: dict[str, int], delta: dict[str, int]) -> dict[str, int]:
    return {k: total.get(k, 0) + delta.get(k, 0) for k in {*total, *delta}}


def run_experiment(exp: Experiment, engines: Engines, log: RunLog, *, resume: bool = False,
                   train_round: TrainRound | None = None) -> dict[str, Any]:
    started = time.monotonic()
    settings = exp.settings
    client_ids = [c.client_id for c in exp.clients]
    by_id = {c.client_id: c for c in exp.clients}
    console = progress.current()
    steps_bar: progress.StepsPhase | None = None

    def tick() -> None:
        if steps_bar is not None:
            steps_bar.step_done()

    def open_steps_bar(round_index: int) -> list[str]:
        nonlocal steps_bar
        selected = select_clients(client_ids, exp.clients_per_round, settings.seed, round_index)
        steps_bar = console.steps_phase("local_steps", f"round {round_index}: local steps",
                                        len(selected) * settings.max_steps,
                                        step_calls(exp, [by_id[c] for c in selected]), len(selected))
        return selected

    in_process = train_round is None
    train_round = train_round or train_in_process(exp.clients, engines, settings, on_step=tick,
                                                  outbound=exp.outbound)
    early_round: Future[list[ClientUpdate]] | None = None

    # The run's LLM cost is accumulated in the checkpoint, phase by phase: engine counters are
    # per process, and a process may host several runs (tests, a Flower server) or half of one.
    llm_mark = llm_totals()
    # Restarts are counted per process, which may host several runs (tests, a Flower server): this run's own.
    restarts_mark = local_server.restart_count()
    state = log.load_checkpoint() if resume else None  # None: it stopped before its first checkpoint
    if resume:
        progress.note(_resume_note(log, state, exp.rounds))
    console.open_rounds(exp.rounds, state["round"] if state is not None else 0)
    # Seconds per phase of the processes before this one; this one's are in console.seconds.
    seconds_before: dict[str, float] = {}
    if state is not None:
        evaluate = Evaluator(exp, engines, state["eval_judge_failures"])
        seconds_before = dict(state.get("phase_seconds", {}))
        log.event("resume", from_round=state["round"])
    else:
        evaluate = Evaluator(exp, engines)
        if in_process:
            # Round 1 trains from the starting prompt and needs the zero-shot accuracies only when it is
            # recorded, so it starts now; the zero-shot calls run at background priority in the endpoint
            # slots its training leaves idle. (A Flower transport owns its clients: it keeps the order.)
            selected = open_steps_bar(1)
            early_round = _start_in_thread(steps_bar.run, train_round,  # type: ignore[union-attr]
                                           selected, starting_prompt(exp.tasks), 1)
        try:
            with background(), metered() as zero_shot_cost, console.phase(
                    "zero_shot", "zero-shot", _zero_shot_calls(exp, evaluate, engines)) as zero_shot:
                state = zero_shot.run(_with_retries, "the zero-shot evaluation", log, engines,
                                      lambda _: _zero_shot_state(exp, engines, log, evaluate))
        except BaseException as exc:
            # No training thread is left running behind the caller's back; after Ctrl-C it stops by itself.
            if early_round is not None and not isinstance(exc, KeyboardInterrupt):
                early_round.exception()
                steps_bar.close()  # type: ignore[union-attr]
            raise
        state["eval_judge_failures"] = evaluate.judge_failures
        # Its own meter counts the zero-shot calls; round 1, running beside it, counts from the same mark.
        state["llm"] = zero_shot_cost.as_dict()
        llm_mark = _add(llm_mark, state["llm"])
        state["phase_seconds"] = dict(console.seconds)
        _print_estimate(exp, log, _add(state["llm"], _delta(llm_totals(), llm_mark)), started, steps_bar,
                        judged=engines.judge is not None)
        log.save_checkpoint(state)

    def train_and_record(round_index: int, last_try: bool) -> dict[str, Any]:
        nonlocal early_round
        if early_round is not None:
            started_early, early_round = early_round, None
            try:
                updates = started_early.result()
            finally:
                steps_bar.close()  # type: ignore[union-attr]
        else:
            selected = open_steps_bar(round_index)
            try:
                updates = steps_bar.run(train_round, selected, state["global_prompt"],  # type: ignore[union-attr]
                                        round_index)
            finally:
                steps_bar.close()  # type: ignore[union-attr]
        lost = [error for error in map(_engine_failure, updates) if error]
        # In-process clients share the endpoints, so one that lost them met a transient fault: the round
        # is retried (the others replay from the cache) and transient faults leave the results unchanged.
        # Flower clients own their endpoints: the round goes on without theirs, as on a last try.
        if lost and (len(lost) == len(updates) or (in_process and not last_try)):
            raise EngineError(lost[0])
        return _record_round(exp, engines, log, evaluate, round_index, updates, state)

    def keep_cost_of_failed_tries() -> None:
        # A stopped phase's calls, retries and time are still the run's cost: kept with the last checkpoint
        # (events.jsonl is already back at its size).
        state["llm"] = _add(state["llm"], _delta(llm_totals(), llm_mark))
        state["phase_seconds"] = _add_seconds(seconds_before, console.seconds)
        log.save_checkpoint(state)

    for round_index in range(state["round"] + 1, exp.rounds + 1):
        summary = _with_retries(f"round {round_index}", log, engines,
                                functools.partial(train_and_record, round_index), keep_cost_of_failed_tries)
        # What this round cost, including its retries: in-process counters, so a Flower run's remote
        # clients report their own in their updates instead.
        summary["llm"], llm_mark = _delta(llm_totals(), llm_mark), llm_totals()
        summary["context_overflows"] = summary["llm"].get("context_overflows", 0)
        state["llm"] = _add(state["llm"], summary["llm"])
        log.event("round", **{k: v for k, v in summary.items() if k != "aggregate"})
        state["history"].append(summary)
        state["global_prompt"] = summary["aggregate"]
        if summary["val"]["mean"] > state["best"]["val"]:
            state["best"] = {"round": round_index, "val": summary["val"]["mean"], "prompt": summary["aggregate"]}
        state["round"] = round_index
        state["eval_judge_failures"] = evaluate.judge_failures
        state["wall_seconds"] += time.monotonic() - started
        state["phase_seconds"] = _add_seconds(seconds_before, console.seconds)
        started = time.monotonic()
        log.save_checkpoint(state)
        console.round_done(summary["val"]["mean"], state["best"]["val"], state["best"]["round"])

    def finish(_: bool) -> dict[str, Any]:
        last, best = state["global_prompt"], state["best"]["prompt"]
        total = evaluate.pending_calls(last, exp.test_sets) + evaluate.pending_calls(best, exp.test_sets)
        with console.phase("final_test", "final test", total) as final:
            # Usually answered from the evaluator's memo: the last round tested its aggregate, zero-shot the start.
            tests = final.run(run_concurrently, [lambda: evaluate(last, exp.test_sets),
                                                 lambda: evaluate(best, exp.test_sets)])
        return _finish(exp, engines, log, evaluate, state, started, llm_mark, tests,
                       _add_seconds(seconds_before, console.seconds), restarts_mark)

    return _with_retries("the final test evaluation", log, engines, finish, keep_cost_of_failed_tries)


class Evaluator:
    """Accuracy of a prompt on validation or test sets; counts the LLM judge's unusable replies.

    Results are remembered per (prompt, sets, engine) for the run, so a prompt evaluated twice (the
    best prompt is often the last one or the starting one) costs its calls once and counts its judge
    failures once: they are counted when an evaluation is first remembered, never on a repeat.
    judge_failures starts from the count of the evaluations before a resume (from the checkpoint).
    """

    def __init__(self, exp: Experiment, engines: Engines, judge_failures: int = 0) -> None:
        self.exp, self.engines = exp, engines
        self._judge_failures_before = judge_failures
        self._memo: dict[tuple[str, int, str], tuple[dict[str, float], int]] = {}
        self._memo_lock = threading.Lock()

    @property
    def judge_failures(self) -> int:
        # A sum over the memo rather than a running counter: an evaluation finished in a phase that was
        # later retried stays remembered (its retry reuses it), so it stays counted, once.
        with self._memo_lock:
            return self._judge_failures_before + sum(failures for _, failures in self._memo.values())

    def __call__(self, prompt: str, sets: EvalSets, engine: ChatEngine | None = None) -> dict[str, float]:
        engine = engine or self.engines.test
        key = (prompt, id(sets), engine.name)  # sets are the experiment's own dicts, alive for the run
        with self._memo_lock:
            known = self._memo.get(key)
        if known is None:
            known = evaluate_on_tasks(prompt, sets, engine, max_tokens=self.exp.settings.answer_max_tokens,
                                      judge=self.engines.judge)
        with self._memo_lock:
            known = self._memo.setdefault(key, known)  # two threads racing on one key: the first one counts
        return dict(known[0])

    def pending_calls(self, prompt: str, sets: EvalSets, engine: ChatEngine | None = None) -> int:
        """LLM calls evaluating prompt on sets would make: 0 when remembered, else eval_calls."""
        engine = engine or self.engines.test
        with self._memo_lock:
            if (prompt, id(sets), engine.name) in self._memo:
                return 0
        return eval_calls(sets, judged=self.engines.judge is not None)


def eval_calls(sets: EvalSets, judged: bool) -> int:
    """An answer per example, plus a judge call per free-form answer with --judge llm."""
    return sum(len(examples) * (2 if judged and task.kind == "free_form" else 1) for task, examples in sets.values())


def _zero_shot_state(exp: Experiment, engines: Engines, log: RunLog, evaluate: Callable) -> dict[str, Any]:
    prompt = starting_prompt(exp.tasks)
    log.save_prompt(0, "global", prompt)
    # The saved prompts are trained texts; once per run, what each task's questions are really sent with.
    for task, served in served_prompts(prompt, exp.tasks).items():
        log.save_prompt(0, f"global.served.{task}", served)
    log.event("answer_format", round=0, lines={t.name: t.format_instruction for t in exp.tasks},
              served_as="trained prompt, newline, the question's own task's line")
    calls = [lambda: evaluate(prompt, exp.val_sets), lambda: evaluate(prompt, exp.test_sets)]
    if exp.run_larger_model:
        calls.append(lambda: evaluate(prompt, exp.test_sets, engines.evaluation))
    results = run_concurrently(calls)
    zero_shot = {"val": results[0], "test": results[1]}
    larger = results[2] if exp.run_larger_model else None
    for split, scores in zero_shot.items():
        log.event("evaluation", round=0, split=split, prompt="starting", engine=engines.test.name, **scores)
        for task, acc in scores.items():
            log.metric(f"zero_shot/{split}/{task}", acc, 0)
    if larger is not None:
        log.event("evaluation", round=0, split="test", prompt="starting", engine=engines.evaluation.name, **larger)
    return {
        "round": 0, "global_prompt": prompt, "starting_prompt": prompt, "zero_shot": zero_shot,
        "evaluation_engine_zero_shot_test": larger, "best": {"round": 0, "val": zero_shot["val"]["mean"],
                                                             "prompt": prompt},
        "history": [], "wall_seconds": 0.0,
    }


def _record_round(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, round_index: int,
                  updates: list[ClientUpdate], state: dict[str, Any]) -> dict[str, Any]:
    settings = exp.settings
    returned = [u for u in updates if not u.error]
    screening = screen_updates(exp.screening, returned, exp.val_sets, engines.test, seed=settings.seed,
                               round_index=round_index, max_tokens=settings.answer_max_tokens, judge=engines.judge)
    merged_from = screening.kept(returned) if screening else returned
    lengths: dict[str, dict[str, Any]] = {}
    merged: tuple[str, str | None, dict[str, float], dict[str, Any]] | None = None
    if returned:
        # Everything after training depends only on the returned prompts, so the UID measures of the
        # client prompts overlap the merge and the validation of its result (the critical path).
        outcomes = run_concurrently([
            lambda: _merge_and_validate(exp, engines, log, evaluate, round_index, merged_from),
            *[lambda u=u: measure_prompt(u.prompt, engines.test) for u in returned]])
        merged = outcomes[0]
        lengths = {u.client_id: length for u, length in zip(returned, outcomes[1:], strict=True)}
    for update in updates:
        for s in update.steps:
            log.event("step", round=round_index, client=update.client_id, **vars(s))
            # Every metric is on the round axis: a round's local steps are its points of this one.
            log.metric(f"train/{update.client_id}/batch_accuracy", s.batch_accuracy, round_index)
        if update.error:
            log.event("client_failed", round=round_index, client=update.client_id, error=update.error)
        else:
            log.save_prompt(round_index, f"client_{update.client_id}", update.prompt)
            log.event("client_update", round=round_index, client=update.client_id,
                      train_accuracy=update.train_accuracy, **lengths[update.client_id])
            if update.train_accuracy is not None:
                log.metric(f"train/{update.client_id}/round_accuracy", update.train_accuracy, round_index)
    if merged is None:
        raise RoundFailed(f"every client failed in round {round_index} ({updates[0].error}); fix the cause and "
                          f"continue with --resume")

    aggregate_prompt, merge_failure, val, length = merged
    log.event("aggregate", round=round_index, method=exp.aggregate_method or "none", clients=[u.client_id for u in
              merged_from], failure=merge_failure, **length)
    log.event("evaluation", round=round_index, split="val", prompt="global", engine=engines.test.name, **val)
    for task, acc in val.items():
        log.metric(f"val/{task}", acc, round_index)
    log.metric("aggregate/tokens", length["tokens"], round_index)
    if length["uid"]:
        for stat in ("mean", "variance", "max"):
            log.metric(f"aggregate/uid_{stat}", length["uid"][stat], round_index)
    summary = {
        "round": round_index, "val": val, "aggregate": aggregate_prompt,
        "aggregate_chars": length["chars"], "aggregate_tokens": length["tokens"],
        "clients": [u.client_id for u in updates], "failed_clients": [u.client_id for u in updates if u.error],
        "client_train_accuracy": {u.client_id: u.train_accuracy for u in returned},
        "aggregate_uid": length.get("uid"),
        "client_prompt_tokens": {u.client_id: lengths[u.client_id]["tokens"] for u in returned},
        "client_prompt_chars": {u.client_id: lengths[u.client_id]["chars"] for u in returned},
        "prompt_tokens_estimated": any(m["tokens_estimated"] for m in [length, *lengths.values()]),
        "steps": len([s for u in updates for s in u.steps]),
        "accepted_steps": len([s for u in updates for s in u.steps if s.accepted]),
        "skipped_steps": sum(u.skipped_steps for u in updates),
        "optimizer_failures": reply_failures([s.format_failure for u in updates for s in u.steps]),
        "judge_format_failures": sum(s.judge_format_failures for u in updates for s in u.steps),
        "aggregation_failure": merge_failure,
        "poisoned_clients": [u.client_id for u in updates if u.client_id in exp.outbound.malicious],
    }
    summary.update(record_leakage(log, round_index, {u.client_id: u.leakage for u in updates if u.leakage}))
    summary.update(record_screening(log, round_index, screening))
    return summary


def format_failures(history: list[dict[str, Any]], eval_judge_failures: int) -> dict[str, int]:
    """Unusable optimizer and merge replies by kind, and judge replies; one flat count per key, so their sum
    is the total. Context overflows are counted under results.json's `context`."""
    optimizer = {kind: sum(r["optimizer_failures"][kind] for r in history) for kind in REPLY_FAILURES}
    merges = reply_failures([r["aggregation_failure"] for r in history])
    return {**{f"optimizer_{kind}": n for kind, n in optimizer.items()},
            **{f"aggregation_{kind}": merges[kind] for kind in REPLY_FAILURES},
            "judge": sum(r["judge_format_failures"] for r in history) + eval_judge_failures,
            # Steps whose requests could not fit the context window: not in train_accuracy.
            "skipped_steps": sum(r.get("skipped_steps", 0) for r in history)}


def _merge_and_validate(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, round_index: int,
                        returned: list[ClientUpdate]) -> tuple[str, str | None, dict[str, float], dict[str, Any]]:
    """(aggregate, why the merge reply was unusable or None, validation scores, aggregate length)."""
    console = progress.current()
    if exp.aggregate_method is None:
        aggregate_prompt, merge_failure = returned[0].prompt, None
    else:
        # concat, or the same prompt from everyone: no call
        calls = int(exp.aggregate_method != "concat" and len({u.prompt.strip() for u in returned}) > 1)
        with console.phase("aggregation", f"round {round_index}: merge", calls) as merge:
            merged = merge.run(aggregate_prompts, [u.prompt for u in returned], exp.aggregate_method, exp.tasks,
                               engines.evaluation, max_tokens=exp.merge_max_tokens)
        aggregate_prompt, merge_failure = merged.prompt, merged.failure
    log.save_prompt(round_index, "global", aggregate_prompt)
    last_round = round_index == exp.rounds
    with console.phase("validation", f"round {round_index}: validation",
                       evaluate.pending_calls(aggregate_prompt, exp.val_sets)) as validation, \
            console.phase("final_test", "final test (last prompt)",
                          evaluate.pending_calls(aggregate_prompt, exp.test_sets) if last_round else 0) as test:
        jobs = [lambda: validation.run(evaluate, aggregate_prompt, exp.val_sets),
                lambda: measure_prompt(aggregate_prompt, engines.test)]
        if last_round:
            # The last aggregate is the final "last" prompt: its test accuracy, which _finish reports, needs
            # no validation result, so it overlaps the validation instead of following it.
            jobs.append(lambda: test.run(evaluate, aggregate_prompt, exp.test_sets))
        val, length = run_concurrently(jobs)[:2]
    return aggregate_prompt, merge_failure, val, length


def _finish(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, state: dict[str, Any],
            started: float, llm_mark: dict[str, int], tests: list[dict[str, float]],
            phase_seconds: dict[str, float], restarts_mark: int = 0) -> dict[str, Any]:
    last, best = state["global_prompt"], state["best"]["prompt"]
    last_test, best_test = tests
    for label, scores in (("last", last_test), ("best", best_test)):
        log.event("evaluation", round=state["round"], split="test", prompt=label, engine=engines.test.name,
                  **scores)
        for task, acc in scores.items():
            log.metric(f"final_test_{label}/{task}", acc, state["round"])
    history = state["history"]
    results = {
        "module": exp.module,
        "tasks": [t.name for t in exp.tasks],
        "aggregate_method": exp.aggregate_method,
        "rounds_completed": state["round"],
        "clients": [c.client_id for c in exp.clients],
        "split_sizes": exp.split_sizes,
        "settings": vars(exp.settings),
        "zero_shot": state["zero_shot"],
        "evaluation_engine_zero_shot_test": state["evaluation_engine_zero_shot_test"],
        "rounds": [{k: v for k, v in r.items() if k != "aggregate"} for r in history],
        # Rounds checkpointed before the flag existed counted characters / 4: estimated.
        "prompt_tokens_estimated": any(r.get("prompt_tokens_estimated", True) for r in history),
        "best": state["best"],
        "final_prompt": last,
        # final_prompt and best.prompt are trained texts; these are what each task's questions are sent with.
        "served_prompts": {"last": served_prompts(last, exp.tasks), "best": served_prompts(best, exp.tasks)},
        # Round 0 of the length plots, in the same tokenizer as every later prompt.
        "starting_prompt_tokens": token_count(state["starting_prompt"], engines.test).tokens,
        "final_test": {"last": last_test, "best": best_test},
        "steps": {"total": sum(r["steps"] for r in history), "accepted": sum(r["accepted_steps"] for r in history)},
        "format_failures": format_failures(history, evaluate.judge_failures),
        "structured_output": {"mode": structured.current_mode(), "fallbacks_to_tags": structured.fallbacks()},
        "embedded_server_restarts": local_server.restart_count() - restarts_mark,
        "llm": {**_add(state["llm"], _delta(llm_totals(), llm_mark)),
                "by_engine_this_process": all_engine_stats()},
        "wall_seconds": round(state["wall_seconds"] + time.monotonic() - started, 3),
        # Wall seconds of each phase, summed over rounds and resumed processes. The zero-shot evaluation
        # runs beside round 1's local steps, and the last validation beside the final test of the last
        # prompt, so they add up to more than wall_seconds.
        "phase_seconds": {key: round(value, 3) for key, value in sorted(phase_seconds.items())},
    }
    results.update(context_results(results["llm"]))
    results.update({**leakage_results(history), **screening_results(history)})
    log.write_results(results)
    log.event("finished", wall_seconds=results["wall_seconds"], llm_calls=results["llm"]["calls"])
    for task, acc in results["final_test"]["best"].items():
        log.metric(f"final/best_test/{task}", acc, state["round"])
    return results


def step_calls(exp: Experiment, clients: list[Client]) -> int:
    """The most LLM calls of one round of these clients' local steps: per step, forward, feedback and
    re-score of each example of the batch (no larger than the client's shard), one optimizer call."""
    batch = exp.settings.batch_size
    return exp.settings.max_steps * sum(3 * min(batch, len(c.examples)) + 1 for c in clients)


def _zero_shot_calls(exp: Experiment, evaluate: Evaluator, engines: Engines) -> int:
    prompt = starting_prompt(exp.tasks)
    calls = evaluate.pending_calls(prompt, exp.val_sets) + evaluate.pending_calls(prompt, exp.test_sets)
    if exp.run_larger_model:
        calls += evaluate.pending_calls(prompt, exp.test_sets, engines.evaluation)
    return calls


def _add_seconds(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    return {k: before.get(k, 0.0) + now.get(k, 0.0) for k in {*before, *now}}


def _print_estimate(exp: Experiment, log: RunLog, done: dict[str, int], started: float,
                    steps: progress.StepsPhase | None, judged: bool) -> None:
    """After the zero-shot phase: the time the whole run will take at the pace of its calls so far
    (`done`: the run's LLM counters until now)."""
    calls_done = done["calls"] + done["cache_hits"]
    # Round 1's local steps so far tell how many calls a round's steps make (its bar's expected total).
    per_round = steps.total if steps is not None and steps.total else step_calls(
        exp, exp.clients[:exp.clients_per_round])
    plan = progress.RunPlan(
        rounds=exp.rounds, step_calls=per_round,
        merge_calls=int(exp.aggregate_method not in (None, "concat") and len(exp.clients) > 1),
        val_calls=eval_calls(exp.val_sets, judged), test_calls=eval_calls(exp.test_sets, judged))
    # Round 1's calls so far are part of calls_done already.
    remaining = max(0, plan.calls() - (steps.done() if steps is not None else 0))
    line, seconds = progress.estimate_line(time.monotonic() - started, calls_done, done["calls"], remaining)
    progress.note(line)
    log.event("estimate", seconds=round(seconds, 1), llm_calls=calls_done + remaining)


def _resume_note(log: RunLog, state: dict[str, Any] | None, rounds: int) -> str:
    name = log.run_dir.name
    if state is None:
        return f"resuming {name}: it stopped before its first checkpoint, so it starts over"
    done = state["round"]
    if done >= rounds:
        return f"resuming {name}: all {rounds} rounds are done; only the final test is left"
    return f"resuming {name} from its checkpoint after round {done}: continuing with round {done + 1} of {rounds}"


def _start_in_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """fn(*args) in a thread of its own, in a copy of the caller's context (priority, meters)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtextgrad-round")
    future = executor.submit(contextvars.copy_context().run, fn, *args)
    executor.shutdown(wait=False)  # the thread ends when fn returns
    return future


def _engine_failure(update: ClientUpdate) -> str | None:
    """The endpoint's error if this client failed on an LLM call (train_in_process records type: message)."""
    prefix = f"{EngineError.__name__}: "
    return update.error[len(prefix):] if update.error and update.error.startswith(prefix) else None


def _endpoints_answer(engines: Engines) -> bool:
    try:
        for engine in dict.fromkeys([engines.test, engines.evaluation]):
            engine.check_available()
    except EngineError:
        return False
    return True


def _with_retries(phase: str, log: RunLog, engines: Engines, attempt: Callable[[bool], T],
                  on_stop: Callable[[], None] | None = None) -> T:
    """Run attempt(last_try); when the LLM endpoint fails it, drop the phase's events, wait and try again:
    once if the endpoint is down, up to PHASE_TRIES in all if it still answers. Then call on_stop and stop
    the run at its last checkpoint with the command that resumes it."""
    events_size = log.events_size()
    for tries in range(1, PHASE_TRIES + 1):
        try:
            return attempt(tries == PHASE_TRIES)
        except EngineError as exc:
            log.truncate_events(events_size)  # the next try (or the resumed run) writes them again
            if tries == PHASE_TRIES or (tries >= 2 and not _endpoints_answer(engines)):
                if on_stop is not None:
                    on_stop()
                raise RunStopped(
                    f"{phase} failed {tries} times because the LLM endpoint failed ({exc}); the run stopped at "
                    f"its last checkpoint: restart or fix the server, then continue with python main.py --resume "
                    f"--run_name {log.run_dir.name} --output_dir {log.run_dir.parent}") from None
            tqdm.write(f"warning: {phase} failed ({exc}); retrying it in {PHASE_RETRY_WAIT_S:.0f} s", file=sys.stderr)
            time.sleep(PHASE_RETRY_WAIT_S)
    raise AssertionError("unreachable")
