"""Scoring replies to real BBH and GSM8K examples, one table per answer type (issue 12's misreadings)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from utils.tasks.answers import final_statement
from utils.tasks.choice import parse_options
from utils.tasks.data import gsm8k_target, load_task_data
from utils.tasks.registry import Example, resolve_task
from utils.tasks.scoring import score_response

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


@cache
def _bbh_examples(subtask: str) -> tuple[Example, ...]:
    raw = json.loads((DATA_ROOT / "bbh" / f"{subtask}.json").read_text())["examples"]
    return tuple(Example(e["input"], e["target"].strip()) for e in raw)


@cache
def _gsm8k_test() -> tuple[Example, ...]:
    rows = [json.loads(line) for line in (DATA_ROOT / "gsm8k" / "test.jsonl").read_text().splitlines()]
    return tuple(Example(r["question"], gsm8k_target(r["answer"])) for r in rows)


def _score(task_name: str, example: Example, reply: str) -> int:
    return score_response(resolve_task(task_name), reply, example.target, question=example.question)


def _bbh_score(subtask: str, index: int, reply: str) -> int:
    return _score(f"BBH_{subtask}", _bbh_examples(subtask)[index], reply)


# ---------------------------------------------------------------- final statement


@pytest.mark.parametrize(
    ("reply", "text", "explicit"),
    [
        ("Let me think.\nAnswer: 42", "42", True),
        ("Answer: 3\nWait.\nAnswer: 7", "7", True),
        ("I think the answer is (A).\nNo: so the answer is (B).", "(B).", True),
        ("Answer: 5\nSo the answer is 6.", "5", True),  # an Answer: line wins over a later phrase
        ("Answer: The answer is (B)", "(B)", True),
        ("Janet earns 9 * 2 = 18.\n#### 18", "18", True),
        ("The final answer is $\\boxed{18}$.", "18}$.", True),
        ("First 3, then 4.\nSo 7 in total.\n", "So 7 in total.", False),
        ("The format is 'Answer: <number>'. So the answer is 7.", "7.", True),
        ("", "", False),
    ],
)
def test_final_statement(reply, text, explicit):
    statement = final_statement(reply)
    assert (statement.text, statement.explicit) == (text, explicit)


def test_parse_options_reads_the_questions_list():
    question = _bbh_examples("date_understanding")[0].question
    assert parse_options(question) == {"A": "12/11/1937", "B": "12/25/1937", "C": "01/04/1938",
                                       "D": "12/04/1937", "E": "12/25/2006", "F": "07/25/1937"}
    assert parse_options(None) == {} and parse_options("no options here") == {}


# ---------------------------------------------------------------- multiple choice

# date_understanding[0]: "Today is Christmas Eve of 1937 ..."; gold (B) 12/25/1937, (A) 12/11/1937, (C) 01/04/1938.
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("The answer is B.", 1),
        ("Options (A) and (C) fail. So the answer is B.", 1),
        ("The answer is (B), not (C).", 1),
        ("The answer is not (C); it is (B).", 1),
        ("Answer: Option B", 1),
        ("Answer: b) 12/25/1937", 1),
        ("Answer: 12/25/1937", 1),
        ("Answer: (B) 12/25/1937, since Christmas Day follows Christmas Eve", 1),
        ("Let's think step by step. (C) is too late.\nSo the answer is (B).", 1),
        ("Tomorrow is Christmas Day, 12/25/1937.", 1),  # no statement: the end of the reply
        ("**Answer:** **B**", 1),
        ("Answer: (C) although (B) was close", 0),
        ("Answer: (A) or (B)", 0),
        ("Answer: B or C", 0),
        ("Answer: either (B) or (C)", 0),
        ("Answer: (B)/(C)", 0),
        ("Answer: 12/11/1937", 0),
        ("So the answer is (C).", 0),
        ("(B) looked right at first. So the answer is (C).", 0),
        ("Answer: (B) is not it, (C) is", 0),
        ("I cannot tell.", 0),
    ],
)
def test_multiple_choice_date_understanding(reply, expected):
    assert _bbh_score("date_understanding", 0, reply) == expected


@pytest.mark.parametrize(
    ("subtask", "index", "reply", "expected"),
    [
        # movie_recommendation[163]: target is the text "Monsters, Inc", listed split as (A) Monsters, (B) Inc.
        ("movie_recommendation", 163, "Answer: Monsters, Inc", 1),
        ("movie_recommendation", 163, "So the answer is (A).", 1),
        ("movie_recommendation", 163, "Answer: (A) Monsters", 1),
        ("movie_recommendation", 163, "Answer: (C) Children of the Night", 0),
        ("movie_recommendation", 163, "Answer: The Incredible Shrinking Man", 0),
        # movie_recommendation[8]: gold (C) Forrest Gump; (A) "A Hard Day's Night" starts with a capital A.
        ("movie_recommendation", 8, "Answer: Forrest Gump", 1),
        ("movie_recommendation", 8, "I would recommend Forrest Gump.", 1),
        ("movie_recommendation", 8, "Answer: A Hard Day's Night", 0),
        ("movie_recommendation", 8, "Answer: (C) Forrest Gump, not A Hard Day's Night", 1),
        # ruin_names[99]: target "dearth, wind, & fire", listed as (I) dearth, (J) wind, (K) & fire.
        ("ruin_names", 99, "Answer: dearth, wind, & fire", 1),
        ("ruin_names", 99, "Answer: (I) dearth", 1),
        ("ruin_names", 99, "Answer: (A) eareth", 0),
        ("ruin_names", 99, "Answer: wind", 0),  # (B) and (J) are both "wind": names no option
        ("ruin_names", 0, "Answer: ruin man", 1),
        ("ruin_names", 0, "Answer: rains man", 0),
        # snarks[62]: both options start "Isn't it just the best?"; that is text, not a rejection of (A).
        ("snarks", 62, "Answer: (A) Isn't it just the best? This has been me for the past several days as well. "
                       "It's been less than enough sleep for the past week", 1),
        # snarks[86]: both options have the same text, so the text alone cannot choose (A).
        ("snarks", 86, "Answer: It's easy to get into politics, all you have to do to is be outrageous", 0),
        ("snarks", 86, "Answer: (A)", 1),
        # geometric_shapes[15]: gold (I) sector; "I" is also the English pronoun.
        ("geometric_shapes", 15, "Answer: I", 1),
        ("geometric_shapes", 15, "Answer: sector", 1),
        ("geometric_shapes", 15, "Answer: I think it is (J)", 0),
        ("geometric_shapes", 15, "Answer: It draws a sector, not a circle", 1),
        ("geometric_shapes", 15, "Answer: It draws a circle, not a sector", 0),
        # reasoning_about_colored_objects[2]: gold (I) mauve among 18 options.
        ("reasoning_about_colored_objects", 2, "The answer is (I) mauve.", 1),
        ("reasoning_about_colored_objects", 2, "Answer: mauve", 1),
        ("reasoning_about_colored_objects", 2, "Answer: teal", 0),
        # penguins_in_a_table[0]: gold (E) James.
        ("penguins_in_a_table", 0, "Answer: James", 1),
        ("penguins_in_a_table", 0, "Answer: E", 1),
        ("penguins_in_a_table", 0, "Answer: Louis", 0),
        # hyperbaton[0]: gold (A).
        ("hyperbaton", 0, "Answer: A because it fits", 1),
        ("hyperbaton", 0, "Answer: a", 1),
        ("hyperbaton", 0, "Answer: a good guess is B", 0),
    ],
)
def test_multiple_choice_real_examples(subtask, index, reply, expected):
    assert _bbh_score(subtask, index, reply) == expected


def test_option_text_needs_the_question():
    example = _bbh_examples("date_understanding")[0]
    task = resolve_task("BBH_date_understanding")
    assert score_response(task, "Answer: 12/25/1937", example.target, question=example.question) == 1
    assert score_response(task, "Answer: 12/25/1937", example.target) == 0
    assert score_response(task, "Answer: (B)", example.target) == 1


# ---------------------------------------------------------------- binary words


@pytest.mark.parametrize(
    ("subtask", "index", "reply", "expected"),
    [
        # formal_fallacies[0]: gold invalid.
        ("formal_fallacies", 0, "Answer: not valid", 1),
        ("formal_fallacies", 0, "Answer: invalid", 1),
        ("formal_fallacies", 0, "Answer: The argument is not deductively valid.", 1),
        ("formal_fallacies", 0, "So the answer is invalid.", 1),
        ("formal_fallacies", 0, "Answer: invalid\nA valid argument would need another premise.", 1),
        ("formal_fallacies", 0, "Answer: valid", 0),
        ("formal_fallacies", 0, "Answer: not invalid", 0),
        ("formal_fallacies", 0, "Answer: valid or invalid", 0),
        ("formal_fallacies", 0, "The premises look invalid at first, but the answer is valid.", 0),
        # formal_fallacies[3]: gold valid.
        ("formal_fallacies", 3, "Answer: not valid", 0),
        ("formal_fallacies", 3, "Answer: deductively valid", 1),
        # boolean_expressions[0]: "not ( True ) and ( True ) is" -> False.
        ("boolean_expressions", 0, "Answer: True and False is False", 1),
        ("boolean_expressions", 0, "Answer: not ( True ) and ( True ) is False", 1),
        ("boolean_expressions", 0, "Answer: not True", 1),
        ("boolean_expressions", 0, "Answer: False, because not True is False", 1),
        ("boolean_expressions", 0, "Answer: True", 0),
        ("boolean_expressions", 0, "Answer: True or False", 0),
        # boolean_expressions[1]: gold True.
        ("boolean_expressions", 1, "Answer: True and False is False", 0),
        ("boolean_expressions", 1, "Answer: True, because True and False is False", 1),
        # navigate[0] / web_of_lies[0] / causal_judgement[2]: No / No / Yes; sports_understanding[0]: "no".
        ("navigate", 0, "Answer: No, it is not.", 1),
        ("navigate", 0, "Answer: yes or no", 0),
        ("navigate", 0, "Answer: Yes", 0),
        ("web_of_lies", 0, "Elanor lies.\nSo the answer is No.", 1),
        ("web_of_lies", 0, "At first yes seemed right.\nAnswer: no", 1),
        ("causal_judgement", 2, "Answer: YES", 1),
        ("causal_judgement", 2, "Answer: No", 0),
        ("sports_understanding", 0, "Answer: No", 1),
        ("sports_understanding", 0, "The sentence is plausible, so yes.", 0),
    ],
)
def test_binary_real_examples(subtask, index, reply, expected):
    assert _bbh_score(subtask, index, reply) == expected


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("subtask", "index", "reply", "expected"),
    [
        # object_counting[27] -> 7, [4] -> 5, [11] -> 12, [28] -> 4.
        ("object_counting", 27, "Answer: 7 (2 apples + 5 pears)", 1),
        ("object_counting", 4, "Answer: 7 (2 apples + 5 pears)", 0),
        ("object_counting", 11, "Answer: 12 items, i.e. 3 boxes of 4", 1),
        ("object_counting", 28, "Answer: 12 items, i.e. 3 boxes of 4", 0),
        ("object_counting", 27, "Answer: 3 + 4 = 7", 1),
        ("object_counting", 27, "Answer: 7.0", 1),
        ("object_counting", 27, "Answer: 7 or 8", 0),
        ("object_counting", 27, "I count 5 vegetables, then 2 more.\nAnswer: seven", 0),
        ("object_counting", 27, "Counting again gives 7.", 1),
        # multistep_arithmetic_two[0] -> 24, [2] -> -50.
        ("multistep_arithmetic_two", 0, "Answer: ((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) = 46 - 22 = 24", 1),
        ("multistep_arithmetic_two", 0, "Answer: -24", 0),
        ("multistep_arithmetic_two", 2, "Answer: \u221250", 1),
        ("multistep_arithmetic_two", 2, "So the answer is -50.", 1),
        ("multistep_arithmetic_two", 2, "Answer: 50", 0),
        ("multistep_arithmetic_two", 2, "-59 - -9 = -50, so -50 it is. Answer: -59", 0),
    ],
)
def test_numeric_real_examples(subtask, index, reply, expected):
    assert _bbh_score(subtask, index, reply) == expected


@pytest.mark.parametrize(
    ("index", "reply", "expected"),
    [
        # test[0]: Janet's ducks, 18 dollars.
        (0, "The answer is 18 dollars.", 1),
        (0, "16 - 3 - 4 = 9 eggs, and 9 * 2 = 18.\n#### 18", 1),
        (0, "She makes 9 * $2 = $18 every day.", 1),
        (0, "Answer: $18.00", 1),
        (0, "The answer is 18 or 20 dollars.", 0),
        (0, "She sells 9 eggs.\nAnswer: 9", 0),
        (0, "#### 16", 0),
        # test[146]: 2,125 (loaded as 2125).
        (146, "Answer: $2,125", 1),
        (146, "Answer: 2,125.00", 1),
        (146, "The answer is 2125.", 1),
        (146, "#### 2,125", 1),
        (146, "Answer: 2,126", 0),
        (146, "Answer: 2.125", 0),
        # test[201]: 114,200.
        (201, "Answer: 114,200 dollars", 1),
        (201, "Answer: 114", 0),
    ],
)
def test_gsm8k_real_examples(index, reply, expected):
    assert _score("GSM8K", _gsm8k_test()[index], reply) == expected


# ---------------------------------------------------------------- word sorting

# word_sorting[4]: "indifferent trainman bootlegging" -> "bootlegging indifferent trainman".
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer: bootlegging indifferent trainman", 1),
        ("The answer is bootlegging indifferent trainman.", 1),
        ("Answer:\nbootlegging\nindifferent\ntrainman", 1),
        ("Answer:\n1. bootlegging\n2. indifferent\n3. trainman", 1),
        ("Answer: bootlegging\nindifferent\ntrainman", 1),
        ("Answer: The sorted words are:\n- bootlegging\n- indifferent\n- trainman", 1),
        ("Sorted alphabetically:\n1. Bootlegging\n2. Indifferent\n3. Trainman", 1),
        ("Answer: Bootlegging, Indifferent, Trainman.", 1),
        ("Answer: bootlegging indifferent trainman\nThese are in alphabetical order.", 1),
        ("Answer: bootlegging, indifferent, and trainman", 1),
        ("Answer: [bootlegging, indifferent, trainman]", 1),
        ("Answer: bootlegging indifferent trainman (sorted alphabetically)", 1),
        ("Answer: bootlegging, and indifferent", 0),
        ("Answer: indifferent trainman bootlegging", 0),
        ("Answer: bootlegging trainman indifferent", 0),
        ("Answer: bootlegging indifferent", 0),
        ("bootlegging indifferent trainman is the order.\nAnswer: trainman indifferent bootlegging", 0),
        ("Answer:\n1. bootlegging\n2. trainman\n3. indifferent", 0),
    ],
)
def test_word_sort_real_example(reply, expected):
    assert _bbh_score("word_sorting", 4, reply) == expected


def test_word_sort_keeps_inner_marks():
    # word_sorting[1] holds "it&t"; word_sorting[5]'s answer has 14 words.
    assert _bbh_score("word_sorting", 1, f"Answer: {_bbh_examples('word_sorting')[1].target}") == 1
    listed = "\n".join(f"{i}. {w}" for i, w in enumerate(_bbh_examples("word_sorting")[5].target.split(), 1))
    assert _bbh_score("word_sorting", 5, f"Here is the list.\nAnswer:\n{listed}") == 1


# ---------------------------------------------------------------- Dyck brackets


@pytest.mark.parametrize(
    ("index", "reply", "expected"),
    [
        # dyck_languages[0]: "[ [" -> "] ]"; [46]: "... [ ( ) ] } >" -> ") ]".
        (0, "Answer: ]]", 1),
        (0, "Answer: ] ]", 1),
        (0, "So the answer is ] ].", 1),
        (0, "Answer: `] ]`", 1),
        (0, "Answer: ] ] (one for each open bracket)", 1),
        (0, "Answer: The closing brackets are ] ]", 1),
        (0, "Answer: [ [ ] ]", 0),
        (0, "Answer: ]", 0),
        (0, "Answer: ] ] ]", 0),
        (46, "Answer: )]", 1),
        (46, "Answer: ) ]", 1),
        (46, "Answer: ] )", 0),
    ],
)
def test_brackets_real_examples(index, reply, expected):
    assert _bbh_score("dyck_languages", index, reply) == expected


def test_dyck_instruction_asks_for_only_the_closing_brackets():
    instruction = resolve_task("BBH_dyck_languages").format_instruction
    assert "only the closing brackets" in instruction and "Answer:" in instruction


# ---------------------------------------------------------------- nothing raises


@pytest.mark.parametrize("question", [None, "", 17, ["x"], "Options:\n(A)\n(B) \n() x\n(\u00e9) y"])
@pytest.mark.parametrize("task_name", ["BBH_date_understanding", "BBH_movie_recommendation", "GSM8K"])
def test_odd_questions_never_raise(task_name, question):
    task = resolve_task(task_name)
    assert score_response(task, "Answer: (B)", "(B)", question=question) == int(task.kind == "multiple_choice")
    assert score_response(task, "Answer: Monsters, Inc", "Monsters, Inc", question=question) == int(
        task.kind == "multiple_choice")


# ---------------------------------------------------------------- answer kind of unknown BBH files


def _write_bbh(folder: Path, name: str, examples: tuple[Example, ...]) -> None:
    payload = {"examples": [{"input": e.question, "target": e.target} for e in examples]}
    (folder / f"{name}.json").write_text(json.dumps(payload))


@pytest.mark.parametrize(
    ("source", "kind", "instruction_bit"),
    [
        ("object_counting", "numeric", "Answer: <number>"),
        ("multistep_arithmetic_two", "numeric", "Answer: <number>"),
        ("date_understanding", "multiple_choice", "Answer: (X)"),
        ("movie_recommendation", "multiple_choice", "Answer: (X)"),  # holds one option-text target
        ("formal_fallacies", "binary", "'Answer: valid' or 'Answer: invalid'"),
        ("sports_understanding", "binary", "'Answer: Yes' or 'Answer: No'"),
        ("boolean_expressions", "binary", "'Answer: True' or 'Answer: False'"),
        ("word_sorting", "word_sort", "sorted words"),
        ("dyck_languages", "brackets", "only the closing brackets"),
    ],
)
def test_unknown_bbh_file_gets_its_kind_from_its_targets(tmp_path, source, kind, instruction_bit):
    _write_bbh(tmp_path, f"my_{source}", _bbh_examples(source))
    task = resolve_task(f"BBH_my_{source}")
    assert task.kind == "free_form"  # the name alone says nothing
    data = load_task_data(task, str(tmp_path), (5, 5, 5), seed=1)
    assert (data.task.name, data.task.subtask, data.task.kind) == (f"BBH_my_{source}", f"my_{source}", kind)
    assert instruction_bit in data.task.format_instruction
    example = data.test[0]
    assert score_response(data.task, f"Answer: {example.target}", example.target, question=example.question) == 1


def test_unknown_bbh_file_with_free_text_targets_stays_free_form(tmp_path):
    examples = (Example("Capital of France?", "Paris"), Example("Capital of Peru?", "Lima"),
                Example("Capital of Chad?", "N'Djamena"))
    _write_bbh(tmp_path, "capitals", examples)
    data = load_task_data(resolve_task("BBH_capitals"), str(tmp_path), (1, 1, 1), seed=1)
    assert data.task.kind == "free_form"


def test_known_subtask_keeps_its_table_kind(tmp_path):
    # A file named like one of the 27 keeps that subtask's kind whatever its targets look like.
    _write_bbh(tmp_path, "object_counting", (Example("q1", "(A)"), Example("q2", "(B)"), Example("q3", "(A)")))
    data = load_task_data(resolve_task("BBH_object_counting"), str(tmp_path), (1, 1, 1), seed=1)
    assert data.task.kind == "numeric"
