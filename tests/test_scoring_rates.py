"""All 27 BBH subtasks and GSM8K: gold answers in every phrasing score 1, another example's answer 0.

The phrasings are bench/scoring_rates.py's (which measures the rates on every example for
docs/benchmarks.md); here a sample of each subtask runs, plus every example whose target is an option text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scoring_rates import Case, bbh_cases, bbh_subtasks, gsm8k_cases, misreadings, replies

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
EVERY = 25  # every 25th example: 10 of a 250-example subtask
SUBTASKS = bbh_subtasks(DATA_ROOT)


def _sample(cases: list[Case]) -> list[Case]:
    return [c for i, c in enumerate(cases) if i % EVERY == 0 or not c.target.startswith("(")
            and c.task.kind == "multiple_choice"]


def test_all_27_subtasks_are_here():
    assert len(SUBTASKS) == 27


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_gold_scores_one_and_another_answer_zero_in_every_phrasing(subtask):
    cases = _sample(bbh_cases(DATA_ROOT, subtask))
    assert len(cases) >= 6
    failures = [(c.target, answer, expected, reply) for c in cases for reply, answer, expected in misreadings(c)]
    assert not failures, f"{len(failures)} misread replies, first: {failures[:3]}"


def test_gsm8k_gold_scores_one_and_another_answer_zero_in_every_phrasing():
    cases = gsm8k_cases(DATA_ROOT)[::EVERY * 2]
    failures = [(c.target, answer, expected, reply) for c in cases for reply, answer, expected in misreadings(c)]
    assert not failures, f"{len(failures)} misread replies, first: {failures[:3]}"


@pytest.mark.parametrize("subtask", ["date_understanding", "formal_fallacies", "object_counting",
                                     "word_sorting", "dyck_languages", "movie_recommendation"])
def test_each_case_has_eight_phrasings_that_mention_the_other_answer(subtask):
    case = bbh_cases(DATA_ROOT, subtask)[0]
    assert case.wrong != case.target
    right = replies(case.task, case.target, case.wrong, case.question)
    wrong = replies(case.task, case.wrong, case.target, case.question)
    assert len(right) >= 8 and len(wrong) >= 8
    # Replies that name the other answer along the way (or after the statement) are what make a
    # scorer that reads the first or the last value anywhere fail.
    assert sum(case.wrong.strip("()") in reply for reply in right) >= 6
    assert sum(case.target.strip("()") in reply for reply in wrong) >= 6


def test_option_text_targets_are_in_the_sample():
    movie = _sample(bbh_cases(DATA_ROOT, "movie_recommendation"))
    ruin = _sample(bbh_cases(DATA_ROOT, "ruin_names"))
    texts = {c.target for c in movie + ruin if not c.target.startswith("(")}
    assert texts == {"Monsters, Inc", "dearth, wind, & fire", "rita, sue and bob poo"}
