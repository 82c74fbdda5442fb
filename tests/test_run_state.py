"""RunState / RoundSummary read and write checkpoint.json and results.json's rounds unchanged."""

from __future__ import annotations

import json

from utils.federated.run_state import BestPrompt, RoundSummary, RunState, add_counts, keep_best

LLM = {"calls": 7, "prompt_tokens": 700, "completion_tokens": 70, "cache_hits": 1, "cache_misses": 7, "retries": 0,
       "failures": 0, "context_overflows": 0, "context_shortened": 0, "context_skipped": 0}
ROUND = {
    "round": 1, "val": {"t": 0.5, "mean": 0.5}, "aggregate": "merged prompt", "aggregate_chars": 13,
    "aggregate_tokens": 3, "clients": ["client0", "client1"], "failed_clients": ["client1"],
    "client_train_accuracy": {"client0": 0.25}, "aggregate_uid": {"mean": 1.0, "variance": 0.5, "max": 2.0},
    "client_prompt_tokens": {"client0": 4}, "client_prompt_chars": {"client0": 20}, "prompt_tokens_estimated": False,
    "steps": 2, "accepted_steps": 1, "skipped_steps": 0,
    "optimizer_failures": {"empty": 0, "no_tags": 1, "truncated": 0, "unparseable_json": 0, "context_overflow": 0},
    "judge_format_failures": 0, "aggregation_failure": None, "poisoned_clients": [],
    "leakage": {"max_longest_run": 1, "redacted_updates": 0}, "screening": None,
    "aggregate_complexity": {"entropy": 2.5, "compression_ratio": 0.9},
    "client_prompt_complexity": {"client0": {"entropy": 2.0, "compression_ratio": 1.2, "uid": None}},
    "llm": LLM, "context_overflows": 0,
    "merge_tree": {"inputs": 2, "levels": [1], "retries": 0, "over_budget": 0, "left_out": 0, "failures": {},
                   "depth": 1, "requests": 1},
}
# checkpoint.json as the round loop has always written it (docs/reliability.md), keys in file order.
CHECKPOINT = {
    "round": 1, "global_prompt": "merged prompt", "starting_prompt": "start", "zero_shot": {
        "val": {"t": 0.25, "mean": 0.25}, "test": {"t": 0.5, "mean": 0.5}},
    "evaluation_engine_zero_shot_test": None, "best": {"round": 1, "val": 0.5, "prompt": "merged prompt"},
    "history": [ROUND], "wall_seconds": 12.5, "eval_judge_failures": 2, "llm": LLM,
    "phase_seconds": {"zero_shot": 1.5, "local_steps": 9.0},
}


def test_a_checkpoint_reads_back_to_the_same_file():
    saved = {**CHECKPOINT, "events_size": 1234, "comet_experiment_key": None}  # utils.reporting.tracking's own keys
    state = RunState.from_dict(json.loads(json.dumps(saved)))
    assert state.best == BestPrompt(1, 0.5, "merged prompt") and state.history[0].client_prompt_tokens == {"client0": 4}
    written = state.to_dict()
    assert json.dumps(written) == json.dumps(CHECKPOINT)  # same keys, order and values


def test_results_rounds_leave_out_the_aggregate_and_keep_every_other_key():
    public = RoundSummary.from_dict(ROUND).public()
    assert list(public) == [k for k in ROUND if k != "aggregate"]
    assert public["leakage"] == {"max_longest_run": 1, "redacted_updates": 0} and public["screening"] is None


def test_a_round_checkpointed_before_the_complexity_measures_reads_without_them():
    older = RoundSummary.from_dict({k: v for k, v in ROUND.items() if "complexity" not in k})
    assert (older.aggregate_complexity, older.client_prompt_complexity) == (None, {})


def test_a_round_becomes_best_only_when_it_validates_strictly_better():
    state = RunState.from_dict({**CHECKPOINT, "history": [], "round": 0,
                                "best": {"round": 0, "val": 0.5, "prompt": "start"}})
    tie = RoundSummary.from_dict({**ROUND, "round": 1, "aggregate": "tie"})
    keep_best(state, tie)
    assert (state.global_prompt, state.best) == ("tie", BestPrompt(0, 0.5, "start"))
    better = RoundSummary.from_dict({**ROUND, "round": 2, "aggregate": "better", "val": {"t": 0.75, "mean": 0.75}})
    keep_best(state, better)
    assert (state.global_prompt, state.best) == ("better", BestPrompt(2, 0.75, "better"))
    worse = RoundSummary.from_dict({**ROUND, "round": 3, "aggregate": "worse", "val": {"t": 0.25, "mean": 0.25}})
    keep_best(state, worse)
    assert (state.global_prompt, state.best) == ("worse", BestPrompt(2, 0.75, "better"))  # the next start, not best


def test_llm_counters_add_key_by_key():
    assert add_counts({"calls": 2, "retries": 1}, {"calls": 3, "cache_hits": 4}) == {"calls": 5, "retries": 1,
                                                                                      "cache_hits": 4}
