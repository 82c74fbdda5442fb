"""What the round loop records: the zero-shot state, each round's summary and events, results.json."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from textgrad.parallel import run_concurrently
from textgrad.serving.budget import context_results
from textgrad.serving.runtime import current_runtime
from textgrad.serving.stats import EngineStats
from textgrad.structured import CONTEXT_OVERFLOW, REPLY_FAILURES

from . import progress
from .aggregation import aggregate_prompts
from .client import ClientUpdate, Engines
from .experiment import Evaluator, Experiment, served_prompts, starting_prompt
from .leakage import leakage_results, record_leakage
from .prompt_stats import measure_prompt, token_count
from .run_state import BestPrompt, RoundSummary, RunState, add_counts
from .screening import record_screening, screen_updates, screening_results
from .tracking import RunLog


class RoundFailed(RuntimeError):
    """No client of a round returned a prompt; the run stops at its last checkpoint."""


def reply_failures(kinds: list[str | None]) -> dict[str, int]:
    """Counts of each way an optimizer or merge reply can be unusable (every kind listed, zeros too)."""
    return {kind: kinds.count(kind) for kind in (*REPLY_FAILURES, CONTEXT_OVERFLOW)}


def zero_shot_state(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator) -> RunState:
    """Round 0: the starting prompt's accuracies, recorded; the state the first round starts from."""
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
    return RunState(round=0, global_prompt=prompt, starting_prompt=prompt, zero_shot=zero_shot,
                    evaluation_engine_zero_shot_test=larger, best=BestPrompt(0, zero_shot["val"]["mean"], prompt))


def record_round(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, round_index: int,
                 updates: list[ClientUpdate]) -> RoundSummary:
    """Screen, merge and validate the round's returned prompts; record them all; the round's summary
    (its LLM cost is added by the caller, who meters the round's retries too)."""
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
            lambda: merge_and_validate(exp, engines, log, evaluate, round_index, merged_from),
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
    return RoundSummary(
        round=round_index, val=val, aggregate=aggregate_prompt,
        aggregate_chars=length["chars"], aggregate_tokens=length["tokens"],
        clients=[u.client_id for u in updates], failed_clients=[u.client_id for u in updates if u.error],
        client_train_accuracy={u.client_id: u.train_accuracy for u in returned},
        aggregate_uid=length.get("uid"),
        client_prompt_tokens={u.client_id: lengths[u.client_id]["tokens"] for u in returned},
        client_prompt_chars={u.client_id: lengths[u.client_id]["chars"] for u in returned},
        prompt_tokens_estimated=any(m["tokens_estimated"] for m in [length, *lengths.values()]),
        steps=len([s for u in updates for s in u.steps]),
        accepted_steps=len([s for u in updates for s in u.steps if s.accepted]),
        skipped_steps=sum(u.skipped_steps for u in updates),
        optimizer_failures=reply_failures([s.format_failure for u in updates for s in u.steps]),
        judge_format_failures=sum(s.judge_format_failures for u in updates for s in u.steps),
        aggregation_failure=merge_failure,
        poisoned_clients=[u.client_id for u in updates if u.client_id in exp.outbound.malicious],
        leakage=record_leakage(log, round_index, {u.client_id: u.leakage for u in updates if u.leakage})["leakage"],
        screening=record_screening(log, round_index, screening)["screening"],
    )


def format_failures(history: list[RoundSummary], eval_judge_failures: int) -> dict[str, int]:
    """Unusable optimizer and merge replies by kind, and judge replies; one flat count per key, so their sum
    is the total. Context overflows are counted under results.json's `context`."""
    optimizer = {kind: sum(r.optimizer_failures[kind] for r in history) for kind in REPLY_FAILURES}
    merges = reply_failures([r.aggregation_failure for r in history])
    return {**{f"optimizer_{kind}": n for kind, n in optimizer.items()},
            **{f"aggregation_{kind}": merges[kind] for kind in REPLY_FAILURES},
            "judge": sum(r.judge_format_failures for r in history) + eval_judge_failures,
            # Steps whose requests could not fit the context window: not in train_accuracy.
            "skipped_steps": sum(r.skipped_steps for r in history)}


def merge_and_validate(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, round_index: int,
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


def write_results(exp: Experiment, engines: Engines, log: RunLog, evaluate: Evaluator, state: RunState,
                  tests: list[dict[str, float]], final_cost: EngineStats, *, started: float,
                  phase_seconds: dict[str, float], restarts_mark: int = 0) -> dict[str, Any]:
    """Record the final test of the last and the best prompt, and write results.json. final_cost: the
    meter of this last phase, not yet in state.llm; started: when this process's wall time last counted."""
    last, best = state.global_prompt, state.best.prompt
    last_test, best_test = tests
    for label, scores in (("last", last_test), ("best", best_test)):
        log.event("evaluation", round=state.round, split="test", prompt=label, engine=engines.test.name,
                  **scores)
        for task, acc in scores.items():
            log.metric(f"final_test_{label}/{task}", acc, state.round)
    history = state.history
    rounds = [r.public() for r in history]
    runtime = current_runtime()
    results = {
        "module": exp.module,
        "tasks": [t.name for t in exp.tasks],
        "aggregate_method": exp.aggregate_method,
        "rounds_completed": state.round,
        "clients": [c.client_id for c in exp.clients],
        "split_sizes": exp.split_sizes,
        "settings": vars(exp.settings),
        "zero_shot": state.zero_shot,
        "evaluation_engine_zero_shot_test": state.evaluation_engine_zero_shot_test,
        "rounds": rounds,
        "prompt_tokens_estimated": any(r.prompt_tokens_estimated for r in history),
        "best": dataclasses.asdict(state.best),
        "final_prompt": last,
        # final_prompt and best.prompt are trained texts; these are what each task's questions are sent with.
        "served_prompts": {"last": served_prompts(last, exp.tasks), "best": served_prompts(best, exp.tasks)},
        # Round 0 of the length plots, in the same tokenizer as every later prompt.
        "starting_prompt_tokens": token_count(state.starting_prompt, engines.test).tokens,
        "final_test": {"last": last_test, "best": best_test},
        "steps": {"total": sum(r.steps for r in history), "accepted": sum(r.accepted_steps for r in history)},
        "format_failures": format_failures(history, evaluate.judge_failures),
        "structured_output": {"mode": runtime.reply_formats.mode,
                              "fallbacks_to_tags": runtime.reply_formats.fallbacks()},
        "embedded_server_restarts": runtime.embedded.restarts - restarts_mark,
        "llm": {**add_counts(state.llm, final_cost.as_dict()),
                "by_engine_this_process": runtime.engine_stats()},
        "wall_seconds": round(state.wall_seconds + time.monotonic() - started, 3),
        # Wall seconds of each phase, summed over rounds and resumed processes. The zero-shot evaluation
        # runs beside round 1's local steps, and the last validation beside the final test of the last
        # prompt, so they add up to more than wall_seconds.
        "phase_seconds": {key: round(value, 3) for key, value in sorted(phase_seconds.items())},
    }
    results.update(context_results(results["llm"], runtime.context_windows()))
    results.update({**leakage_results(rounds), **screening_results(rounds)})
    log.write_results(results)
    log.event("finished", wall_seconds=results["wall_seconds"], llm_calls=results["llm"]["calls"])
    for task, acc in results["final_test"]["best"].items():
        log.metric(f"final/best_test/{task}", acc, state.round)
    return results
