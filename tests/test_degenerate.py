"""No junk kept: an optimizer or merge reply that parsed but holds no instructions is rejected and counted as
its own kind, "degenerate" (utils.federated.degenerate), in the local step, in the merge, in results.json and
in the summary. The junk is what SmolLM2-135M really wrote on the quickstart (`2. The answer is 2`, `][`)
and a training question copied whole; the good prompts are ones a capable optimizer writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from test_training_logic import homo_clients, make_experiment, run

from utils.federated.aggregation import aggregate_prompts
from utils.federated.client import Engines, LocalSettings, keep_new_prompt, local_step
from utils.federated.degenerate import degenerate_reason
from utils.tasks.registry import STARTING_INSTRUCTIONS, Example, resolve_task

ROOT = Path(__file__).resolve().parents[1]
BBH = ROOT.parent / "shared" / "data" / "bbh"
COUNTING = resolve_task("synthetic_object_counting")
QUESTION = ("I have a flute, a piano, a trombone, four stoves, a violin, an accordion, a clarinet, a drum, two "
            "lamps, and a trumpet. How many musical instruments do I have?")  # BBH object_counting, example 0


def bbh_examples(subtask: str, n: int = 3) -> list[Example]:
    examples = json.loads((BBH / f"{subtask}.json").read_text(encoding="utf-8"))["examples"][:n]
    return [Example(e["input"], e["target"]) for e in examples]


@pytest.mark.parametrize(("text", "reason"), [
    ("2. The answer is 2", "no instruction, only an answer"),
    ("Answer: 8", "no instruction, only an answer"),
    ("The answer is (B). Answer: (B)", "no instruction, only an answer"),
    ("][", "too short"),
    ("", "too short"),
    ("Count.", "too short"),
    ("answer answer answer answer answer", "too short"),  # one distinct word, however often
    ("1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14. Count all of the items.", "mostly punctuation or digits"),
    ("{[()]} {[()]} {[()]} Count each item once. {[()]} {[()]} {[()]} {[()]}", "mostly punctuation or digits"),
])
def test_junk_is_degenerate_for_its_reason(text: str, reason: str) -> None:
    assert degenerate_reason(text) == reason


def test_a_copied_training_question_is_degenerate() -> None:
    batch = bbh_examples("object_counting")
    assert batch[0].question == QUESTION
    assert degenerate_reason(QUESTION, batch) == "copied from a question"
    assert degenerate_reason(f"Solve this: {QUESTION}", batch) == "copied from a question"
    # The same text is a fine prompt for a batch it was not copied from: the rule is about the step's examples.
    assert degenerate_reason(QUESTION, bbh_examples("date_understanding")) is None
    # What SmolLM2 wrote on the quickstart: the end of a question, which two of the batch's three share.
    assert degenerate_reason("How many musical instruments do I have?", batch) == "copied from a question"


def test_the_tasks_own_wording_is_not_a_copied_question() -> None:
    batch = bbh_examples("word_sorting")  # every question opens "Sort the following words alphabetically: List:"
    assert degenerate_reason("Sort the following words alphabetically.", batch) is None
    assert degenerate_reason(batch[0].question, batch) == "copied from a question"  # its word list too
    # With one example nothing tells the task's wording from the question's: all of it counts as copied.
    assert degenerate_reason("Sort the following words alphabetically.", batch[:1]) == \
        "copied from a question"


@pytest.mark.parametrize("text", [
    STARTING_INSTRUCTIONS,
    "Count each listed item once, then add them up.",
    "Think step by step.",
    "Give the answer as a number.",  # mentions the answer without stating one
    "Step 1: list every object with its count. Step 2: add the counts of the kind asked about. "
    "Step 3: check the sum twice.",
    "Sort the following words alphabetically, comparing letter by letter; when one word is a prefix of "
    "another, put the shorter first.",  # the task's own phrasing is not a copied question
    "Read the question closely; the answer is the total of the items of the kind asked about. Check twice.",
])
def test_good_prompts_pass(text: str) -> None:
    batch = bbh_examples("object_counting") + bbh_examples("word_sorting")
    assert degenerate_reason(text, batch) is None


def test_a_prompt_quoting_less_than_half_a_question_passes() -> None:
    batch = bbh_examples("object_counting")
    prompt = ("Count only the objects of the kind the question asks about, one by one, and say which you counted. "
              "For instance, in 'I have a flute, a piano, a trombone, four stoves' the instruments are three, not "
              "seven; add the counts carefully and check the total before you finish.")
    assert degenerate_reason(prompt, batch) is None


def _step(improve: str) -> tuple[str, object, ScriptedEngine]:
    engine = ScriptedEngine(answer=lambda q, s: "Answer: 3", improve=lambda cur: improve)
    batch = [Example(QUESTION, "8"), Example("I have a cup and two plates. How many objects do I have?", "3")]
    prompt, result = local_step(COUNTING.starting_prompt(), batch, COUNTING, Engines(engine, engine),
                                LocalSettings(batch_size=2))
    return prompt, result, engine


@pytest.mark.parametrize("junk", ["2. The answer is 2", "][", QUESTION])
def test_a_degenerate_rewrite_is_reverted_counted_and_never_rescored(junk: str) -> None:
    prompt, result, engine = _step(junk)
    assert prompt == COUNTING.starting_prompt()
    assert result.format_failure == "degenerate" and not result.accepted and result.new_batch_accuracy is None
    assert engine.count("answer") == 2  # the forward pass only: junk is not worth a re-score


def test_a_good_rewrite_is_kept() -> None:
    prompt, result, _ = _step("Count each listed item once, then add them up.")
    assert prompt == "Count each listed item once, then add them up." and result.accepted
    assert result.format_failure is None


@pytest.mark.parametrize("junk", ["][", "2. The answer is 2"])
def test_a_degenerate_merge_falls_back_to_the_concatenation(junk: str) -> None:
    engine = ScriptedEngine()
    engine.generate = lambda *a, **k: f"<MERGED_PROMPT>{junk}</MERGED_PROMPT>"
    merged = aggregate_prompts(["Count every item.", "Add the counts up."], "summarization", [COUNTING], engine)
    assert merged.failure == "degenerate" and merged.format_failure
    assert merged.prompt == "Count every item.\n\nAdd the counts up."


def test_degenerate_replies_are_counted_in_results_and_the_junk_never_becomes_the_global_prompt(
        tmp_path: Path) -> None:
    # Every rewrite is junk and every merge would be too: the starting prompt stays the global prompt.
    engine = ScriptedEngine(answer=lambda q, s: "Answer: 3", improve=lambda cur: "2. The answer is 2")
    results = run(tmp_path, make_experiment([COUNTING], homo_clients(), rounds=2, method="summarization"), engine)
    steps = 3 * 2 * 2  # clients x rounds x steps
    assert results["format_failures"]["optimizer_degenerate"] == steps
    assert results["steps"]["accepted"] == 0
    assert results["final_prompt"] == COUNTING.starting_prompt()
    assert all(r["optimizer_failures"]["degenerate"] == 6 for r in results["rounds"])


class CopyingMerger(ScriptedEngine):
    """Writes a different rewrite for every step, and answers every merge request with `merged`."""

    def __init__(self, merged: str) -> None:
        edits = itertools.count(1)
        super().__init__(answer=lambda q, s: "Answer: 3",
                         improve=lambda cur: f"Count each item once, then check the sum {next(edits)} times.")
        self.merged = merged

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: object) -> str:
        if self.kind_of(system_prompt) == "merge":
            super().generate(prompt, system_prompt, **kwargs)  # counted
            return f"<MERGED_PROMPT>{self.merged}</MERGED_PROMPT>"
        return super().generate(prompt, system_prompt, **kwargs)


def test_a_merge_copying_a_validation_question_never_becomes_the_global_prompt(tmp_path: Path) -> None:
    # The server holds no client's examples (over Flower): it checks a merge against its validation questions.
    exp = make_experiment([COUNTING], homo_clients(), rounds=1, method="summarization")
    question = exp.val_sets[COUNTING.name][1][0].question
    engine = CopyingMerger(question)
    results = run(tmp_path, exp, engine)
    assert engine.count("merge") == 1
    assert results["format_failures"]["aggregation_degenerate"] == 1
    assert results["final_prompt"] != question and results["final_prompt"].count("Count each item once") == 3

    good = CopyingMerger("Count each item once, then check the sum twice.")
    results = run(tmp_path / "good", make_experiment([COUNTING], homo_clients(), rounds=1, method="summarization"),
                  good)
    assert results["format_failures"]["aggregation_degenerate"] == 0
    assert results["final_prompt"] == "Count each item once, then check the sum twice."


def test_the_accept_rule_at_zero_accuracy_is_the_specs() -> None:
    # "Not lower" keeps a 0.0 -> 0.0 rewrite (junk no longer reaches the re-score); proximal needs a rise or 1.0.
    assert keep_new_prompt(0.0, 0.0, proximal=False) is True
    assert keep_new_prompt(0.0, 0.0, proximal=True) is False
    assert keep_new_prompt(0.0, 1 / 3, proximal=True) is True and keep_new_prompt(1.0, 1.0, proximal=True) is True
    assert keep_new_prompt(1 / 3, 0.0, proximal=False) is False
