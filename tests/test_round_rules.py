"""Rules of the round loop and of evaluation, each pinned to a value written here: the best round, the
heterogeneous mean, the order of selected clients, skipping the merge, the LLM judge and its counts."""

from __future__ import annotations

import itertools
import re
from dataclasses import replace
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from test_training_logic import homo_clients, make_experiment, run

from textgrad.errors import ContextOverflowError
from utils.federated.aggregation import aggregate_prompts
from utils.federated.client import ClientUpdate, LocalSettings, StepResult
from utils.federated.experiment import Client, Experiment, starting_prompt
from utils.federated.plan import select_clients
from utils.tasks.evaluation import evaluate_on_tasks, evaluate_prompt, judge_answer, score_answer
from utils.tasks.registry import Example, resolve_task

COUNTING = resolve_task("synthetic_object_counting")
SORTING = resolve_task("synthetic_word_sorting")
ARITH = resolve_task("synthetic_multistep_arithmetic")
# A BBH-format file whose targets are free text (not one of the 27): scored by the LLM judge under --judge llm.
FREE_FORM = resolve_task("BBH_my_free_text_task", kind_hint_targets=["a sunny day", "two cats"])


# ------------------------------------------------------------------ best prompt


def _versioned_run(tmp_path: Path, correct_by_version: dict[int, int]) -> dict:
    """One client, one step per round; round r's prompt is "Version r: ..." and gets correct_by_version[r]
    of the 4 validation questions right (version 0 = the starting prompt); training batches are always
    right, so every new prompt is kept."""
    versions = itertools.count(1)
    exp = make_experiment([COUNTING], homo_clients(1, 4), rounds=len(correct_by_version) - 1, max_steps=1,
                          method=None)
    val_questions = [e.question for e in exp.val_sets[COUNTING.name][1]]
    targets = {e.question: e.target for _, examples in [*exp.val_sets.values(), *exp.test_sets.values()]
               for e in examples} | {e.question: e.target for e in exp.clients[0].examples}

    def answer(question: str, system: str | None) -> str:
        version = int(match.group(1)) if (match := re.search(r"Version (\d+)", system or "")) else 0
        right = question not in val_questions or val_questions.index(question) < correct_by_version[version]
        return f"Answer: {targets[question]}" if right else "Answer: -1"

    engine = ScriptedEngine(answer=answer, improve=lambda cur: f"Version {next(versions)}: count each item once.")
    return run(tmp_path, exp, engine)


@pytest.mark.parametrize(("correct_by_version", "best_round", "best_val"), [
    ({0: 1, 1: 2, 2: 3, 3: 3, 4: 2}, 2, 0.75),  # rounds 2 and 3 tie: the earlier one stays best
    ({0: 2, 1: 2, 2: 1}, 0, 0.5),                # no round beats the starting prompt
    ({0: 0, 1: 1, 2: 4, 3: 0}, 2, 1.0),          # the best is neither the first nor the last
])
def test_best_prompt_is_the_round_with_the_highest_validation_score_ties_keep_the_earlier(
        tmp_path, correct_by_version, best_round, best_val):
    results = _versioned_run(tmp_path, correct_by_version)
    assert [r["val"]["mean"] for r in results["rounds"]] == [correct_by_version[v] / 4
                                                            for v in range(1, len(correct_by_version))]
    assert (results["best"]["round"], results["best"]["val"]) == (best_round, best_val)
    if best_round:
        assert f"Version {best_round}:" in results["best"]["prompt"]
    else:
        assert results["best"]["prompt"] == starting_prompt([COUNTING])


# ------------------------------------------------------------------ heterogeneous mean


def test_heterogeneous_mean_is_the_mean_of_the_per_task_scores():
    # 1 of 4, 2 of 2 and 3 of 6 right: per task 0.25, 1.0, 0.5; their mean 0.5833, the pooled 6/12 = 0.5.
    sizes, rights = {COUNTING: 4, SORTING: 2, ARITH: 6}, {COUNTING: 1, SORTING: 2, ARITH: 3}
    sets, right = {}, {}
    for task, size in sizes.items():
        target = "apple banana" if task is SORTING else "7"
        examples = [Example(f"{task.name} question {i}", target) for i in range(size)]
        sets[task.name] = (task, examples)
        right |= {e.question: e.target for e in examples[:rights[task]]}
    engine = ScriptedEngine(answer=lambda question, system: f"Answer: {right.get(question, 1)}")
    scores, _ = evaluate_on_tasks("Be exact.", sets, engine)
    assert scores[COUNTING.name] == 0.25 and scores[SORTING.name] == 1.0 and scores[ARITH.name] == 0.5
    assert scores["mean"] == pytest.approx(1.75 / 3)  # 0.5833..., not the pooled 0.5


# ------------------------------------------------------------------ client selection


def test_select_clients_returns_clients_in_client_order():
    ids = ["c3", "c1", "c4", "c0", "c2"]  # client order is the experiment's, not sorted
    for round_index in range(1, 9):
        chosen = select_clients(ids, 3, seed=11, round_index=round_index)
        assert len(chosen) == 3 and len(set(chosen)) == 3
        assert chosen == [c for c in ids if c in chosen]
    assert select_clients(ids, 5, seed=11, round_index=1) == ids
    assert select_clients(ids, 9, seed=11, round_index=1) == ids


# ------------------------------------------------------------------ merge skipped


def test_no_merge_call_when_every_client_returns_the_same_prompt(tmp_path):
    fmt = COUNTING.format_instruction
    engine = ScriptedEngine()
    merged = aggregate_prompts([f"Same.\n{fmt}", f"Same.\n{fmt} ", f" Same.\n{fmt}"], "summarization",
                               [COUNTING], engine)
    assert engine.count("merge") == 0 and merged.prompt == f"Same.\n{fmt}"
    aggregate_prompts([f"Same.\n{fmt}", f"Other.\n{fmt}"], "summarization", [COUNTING], engine)
    assert engine.count("merge") == 1

    same = ScriptedEngine(improve=lambda cur: "Count the same way every time.")
    results = run(tmp_path, make_experiment([COUNTING], homo_clients(), rounds=2, method="sum_uid"), same)
    assert same.count("merge") == 0 and same.count("optimizer") == 3 * 2 * 2
    # the trained text: the format line is served, not trained
    assert results["final_prompt"] == "Count the same way every time."


# ------------------------------------------------------------------ LLM judge


class _Judge(ScriptedEngine):
    """A scripted engine whose judge replies are given: a list (one per call, in order) or one text."""

    def __init__(self, replies: list[str] | str) -> None:
        super().__init__("judge")
        self.replies = replies

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: object) -> str:
        if self.kind_of(system_prompt) != "judge":
            return super().generate(prompt, system_prompt, **kwargs)
        with self._lock:
            self.calls.append(("judge", system_prompt, prompt))
            return self.replies if isinstance(self.replies, str) else self.replies.pop(0)


@pytest.mark.parametrize(("reply", "verdict"), [
    ("Yes", 1), ("No", 0), ("yes.", 1), ("NO", 0), ("Answer: Yes, they mean the same.", 1),
    ("No, the response differs.", 0), ("I cannot tell", None), ("Yesterday's answer", None), ("Nope", None),
    ("", None), ("maybe", None),
])
def test_judge_reads_a_yes_or_no_word(reply, verdict):
    assert judge_answer(_Judge([reply]), "Answer: ( )", "( )") == verdict


def test_judge_failures_are_counted_and_score_zero():
    judge = _Judge(["Yes", "unsure", "No", "Yes", "hmm"])
    examples = [Example(f"Complete the sequence {i}", "( )") for i in range(5)]
    result = evaluate_prompt("Close the brackets.", examples, FREE_FORM, ScriptedEngine(answer=lambda q, s: "( )"),
                             judge=judge)
    assert sorted(result.correct) == [0, 0, 0, 1, 1] and result.judge_format_failures == 2
    # Under --judge llm the judge scores every task, numeric ones too (as the reference code judges its BBH
    # tasks): its "No" wins over a reply our grader would accept, and without a judge our grader scores.
    assert score_answer(COUNTING, "Answer: 3", "3", _Judge(["No"])) == (0, False)
    assert score_answer(COUNTING, "Answer: 3", "3") == (1, False)


def test_judge_failures_count_once_per_evaluation_not_per_memoised_repeat(tmp_path):
    # One client, one round, one step of batch 2, 4 validation and 4 test examples, the judge never usable:
    # zero-shot val 4 + test 4, the step's forward 2 + re-score 2, round val 4 + its test 4 = 20. The final
    # test of the last prompt and of the best (the starting one) come from the memo and add nothing.
    examples = [Example(f"Complete the sequence {i}", "( )") for i in range(10)]
    exp = Experiment(module="test", tasks=[FREE_FORM], clients=[Client("central", FREE_FORM, examples[:2])],
                     val_sets={FREE_FORM.name: (FREE_FORM, examples[2:6])}, test_sets={FREE_FORM.name: (FREE_FORM, examples[6:10])},
                     aggregate_method=None, rounds=1, clients_per_round=1,
                     settings=LocalSettings(max_steps=1, batch_size=2), run_larger_model=False)
    engine = _Judge("It depends.")
    results = run(tmp_path, exp, engine, judge=True)
    assert engine.count("judge") == 20
    assert results["format_failures"]["judge"] == 20
    assert results["best"]["round"] == 0


# ------------------------------------------------------------------ skipped steps


def _update(*failures: str | None) -> ClientUpdate:
    steps = [StepResult(i, 0.0 if f == "context_overflow" else 0.5 + 0.25 * (i % 2), None, False, f)
             for i, f in enumerate(failures)]
    return ClientUpdate("c", 1, "p", "p", steps=steps)


def test_skipped_steps_are_counted_and_left_out_of_train_accuracy():
    update = _update(None, "context_overflow", "no_tags", "context_overflow")
    # Measured steps 0 and 2 had batch accuracy 0.5 each; the two skipped ones measured nothing.
    assert update.train_accuracy == 0.5 and update.skipped_steps == 2
    assert _update("context_overflow").train_accuracy is None
    assert _update(None, None).train_accuracy == 0.625


def test_skipped_steps_in_the_round_summary_and_results(tmp_path):
    # Two training examples, batch 1, two steps: one step's question cannot fit the window (skipped), the
    # other is answered right. Old behaviour: the skipped step's 0.0 halved train_accuracy to 0.5.
    def answer(question: str, system: str | None) -> str:
        if question == "too long":
            raise ContextOverflowError("the request exceeds the available context size")
        return "Answer: 3"

    clients = [Client("central", COUNTING, [Example("too long", "3"), Example("I have 3 cups.", "3")])]
    exp = make_experiment([COUNTING], clients, rounds=2, max_steps=2, method=None)
    exp.settings = replace(exp.settings, batch_size=1)
    results = run(tmp_path, exp, ScriptedEngine(answer=answer))
    assert [r["skipped_steps"] for r in results["rounds"]] == [1, 1]
    assert results["format_failures"]["skipped_steps"] == 2
    assert [r["client_train_accuracy"]["central"] for r in results["rounds"]] == [1.0, 1.0]
