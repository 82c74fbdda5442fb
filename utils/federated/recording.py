"""What the round loop records, and only records: the zero-shot state, each round's prompts, events and
summary, the final test and results.json. Every number it records was computed by the loop."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from textgrad.serving.budget import context_results
from textgrad.serving.runtime import current_runtime
from textgrad.serving.stats import EngineStats
from textgrad.structured import CONTEXT_OVERFLOW, REPLY_FAILURES
from utils.privacy.leakage import leakage_results, record_leakage
from utils.reporting.complexity import COMPLEXITY, complexity
from utils.reporting.prompt_stats import token_count
from utils.reporting.tracking import RunLog

from .aggregation import Aggregate
from .client import ClientUpdate, Engines
from .degenerate import DEGENERATE
from .experiment import Evaluator, Experiment, served_prompts
from .run_state import BestPrompt, RoundSummary, RunState, Scores, add_counts
from .screening import Screening, record_screening, screening_results

if TYPE_CHECKING:
    from .plan import Evaluation


# Why an optimizer or merge reply gave no prompt: its format, or junk in the right format.
UNUSABLE = (*REPLY_FAILURES, DEGENERATE)


def reply_failures(kinds: list[str | None]) -> dict[str, int]:
    """Counts of each way an optimizer or merge reply can be unusable (every kind listed, zeros too)."""
    return {kind: kinds.count(kind) for kind in (*UNUSABLE, CONTEXT_OVERFLOW)}


def record_zero_shot(log: RunLog, exp: Experiment, engines: Engines, prompt: str, evaluations: tuple[Evaluation, ...],
                     scores: list[Scores]) -> RunState:
    """Round 0: the starting prompt and its planned evaluations, recorded; the state the first round starts from."""
    log.save_prompt(0, "global", prompt)
    # The saved prompts are trained texts; once per run, what each task's questions are really sent with.
    for task, served in served_prompts(prompt, exp.tasks).items():
        log.save_prompt(0, f"global.served.{task}", served)
    log.event("answer_format", round=0, lines={t.name: t.format_instruction for t in exp.tasks},
              served_as="trained prompt, newline, the question's own task's line")
    zero_shot, larger = {}, None
    for evaluation, accuracy in zip(evaluations, scores, strict=True):
        engine = engines.evaluation if evaluation.engine == "evaluation" else engines.test
        log.event("evaluation", round=0, split=evaluation.split, prompt="starting", engine=engine.name, **accuracy)
        if evaluation.engine == "evaluation":  # the evaluation engine's own zero-shot test: reported, not tracked
            larger = accuracy
            continue
        zero_shot[evaluation.split] = accuracy
        for task, acc in accuracy.items():
            log.metric(f"zero_shot/{evaluation.split}/{task}", acc, 0)
    return RunState(round=0, global_prompt=prompt, starting_prompt=prompt, zero_shot=zero_shot,
                    evaluation_engine_zero_shot_test=larger, best=BestPrompt(0, zero_shot["val"]["mean"], prompt))


def record_updates(log: RunLog, round_index: int, updates: list[ClientUpdate],
                   lengths: dict[str, dict[str, Any]]) -> None:
    """Each client's steps and the prompt it returned (with its length), or why it failed."""
    log.save_prompts(round_index, {f"client_{u.client_id}": u.prompt for u in updates if not u.error})
    for update in updates:
        for s in update.steps:
            log.event("step", round=round_index, client=update.client_id, **vars(s))
            # Every metric is on the round axis: a round's local steps are its points of this one.
            log.metric(f"train/{update.client_id}/batch_accuracy", s.batch_accuracy, round_index)
        if update.error:
            log.event("client_failed", round=round_index, client=update.client_id, error=update.error)
        else:
            log.event("client_update", round=round_index, client=update.client_id,
                      train_accuracy=update.train_accuracy, **lengths[update.client_id])
            if update.train_accuracy is not None:
                log.metric(f"train/{update.client_id}/round_accuracy", update.train_accuracy, round_index)


def record_round(log: RunLog, exp: Experiment, engines: Engines, round_index: int, updates: list[ClientUpdate],
                 screening: Screening | None, merged_from: list[ClientUpdate], aggregate: Aggregate, val: Scores,
                 length: dict[str, Any], lengths: dict[str, dict[str, Any]]) -> RoundSummary:
    """Record what the round did (prompts, events, metrics); its summary. The caller adds the round's LLM
    cost, which it meters across the round's retries."""
    returned = [u for u in updates if not u.error]
    log.save_prompt(round_index, "global", aggregate.prompt)
    record_updates(log, round_index, updates, lengths)
    tree = aggregate.tree.to_dict() if aggregate.tree is not None else None
    log.event("aggregate", round=round_index, method=exp.aggregate_method or "none", clients=[u.client_id for u in
              merged_from], failure=aggregate.failure, merge_tree=tree, **length)
    log.event("evaluation", round=round_index, split="val", prompt="global", engine=engines.test.name, **val)
    for task, acc in val.items():
        log.metric(f"val/{task}", acc, round_index)
    log.metric("aggregate/tokens", length["tokens"], round_index)
    for measure in COMPLEXITY:
        if length[measure] is not None:
            log.metric(f"aggregate/{measure}", length[measure], round_index)
    if length["uid"]:
        for stat in ("mean", "variance", "max"):
            log.metric(f"aggregate/uid_{stat}", length["uid"][stat], round_index)
    steps = [s for u in updates for s in u.steps]
    return RoundSummary(
        round=round_index, val=val, aggregate=aggregate.prompt,
        aggregate_chars=length["chars"], aggregate_tokens=length["tokens"],
        clients=[u.client_id for u in updates], failed_clients=[u.client_id for u in updates if u.error],
        client_train_accuracy={u.client_id: u.train_accuracy for u in returned},
        aggregate_uid=length.get("uid"),
        client_prompt_tokens={u.client_id: lengths[u.client_id]["tokens"] for u in returned},
        client_prompt_chars={u.client_id: lengths[u.client_id]["chars"] for u in returned},
        prompt_tokens_estimated=any(m["tokens_estimated"] for m in [length, *lengths.values()]),
        steps=len(steps),
        accepted_steps=len([s for s in steps if s.accepted]),
        skipped_steps=sum(u.skipped_steps for u in updates),
        optimizer_failures=reply_failures([s.format_failure for s in steps]),
        judge_format_failures=sum(s.judge_format_failures for s in steps),
        aggregation_failure=aggregate.failure,
        merge_tree=tree,
        poisoned_clients=[u.client_id for u in updates if u.client_id in exp.outbound.malicious],
        leakage=record_leakage(log, round_index, {u.client_id: u.leakage for u in updates if u.leakage})["leakage"],
        screening=record_screening(log, round_index, screening)["screening"],
        aggregate_complexity={measure: length[measure] for measure in COMPLEXITY},
        client_prompt_complexity={u.client_id: {m: lengths[u.client_id][m] for m in (*COMPLEXITY, "uid")}
                                  for u in returned},
    )


def format_failures(history: list[RoundSummary], eval_judge_failures: int) -> dict[str, int]:
    """Unusable optimizer and merge replies by kind, and judge replies; one flat count per key, so their sum
    is the total. Context overflows are counted under results.json's `context`."""
    # .get: a checkpoint written before a kind existed has no count of it
    optimizer = {kind: sum(r.optimizer_failures.get(kind, 0) for r in history) for kind in UNUSABLE}
    # A round merged in a tree may have had several unusable merge replies: its tree counts them by kind.
    merges = reply_failures([kind for r in history for kind, n in _merge_failures(r).items() for _ in range(n)])
    return {**{f"optimizer_{kind}": n for kind, n in optimizer.items()},
            **{f"aggregation_{kind}": merges[kind] for kind in UNUSABLE},
            "judge": sum(r.judge_format_failures for r in history) + eval_judge_failures,
            # Steps whose requests could not fit the context window: not in train_accuracy.
            "skipped_steps": sum(r.skipped_steps for r in history)}


def _merge_failures(summary: RoundSummary) -> dict[str, int]:
    if summary.merge_tree is not None:
        return summary.merge_tree["failures"]
    return {summary.aggregation_failure: 1} if summary.aggregation_failure else {}


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
        # The budget of a merged prompt (--max_prompt_tokens, or derived from the windows); None: not set.
        "max_prompt_tokens": exp.merge_limits.max_prompt_tokens if exp.merge_limits else None,
        "clients": [c.client_id for c in exp.clients],
        "split_sizes": exp.split_sizes,
        "settings": vars(exp.settings),
        "judge": "llm" if engines.judge is not None else "string",  # who scored the answers (--judge)
        "sampling": {role: {"temperature": getattr(engine, "temperature", 0.0), "top_p": getattr(engine, "top_p", None)}
                     for role, engine in engines.by_role().items()},
        "starting_prompt": state.starting_prompt,
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
        "starting_prompt_complexity": complexity(state.starting_prompt),
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
