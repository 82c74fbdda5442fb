"""Scorers, answer extraction, task resolution and format instructions."""

import json
from pathlib import Path

import pytest

from utils.tasks.answers import extract_answer
from utils.tasks.choice import score_multiple_choice
from utils.tasks.registry import (
    TaskError,
    format_instruction_for,
    resolve_task,
    served_prompt,
)
from utils.tasks.scoring import score_binary, score_exact, score_numeric, score_response, score_word_sort

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"

# The 27 BIG-Bench Hard subtasks and the answer kind each must resolve to.
EXPECTED_BBH_KINDS = {
    "boolean_expressions": "binary",
    "causal_judgement": "binary",
    "date_understanding": "multiple_choice",
    "disambiguation_qa": "multiple_choice",
    "dyck_languages": "brackets",
    "formal_fallacies": "binary",
    "geometric_shapes": "multiple_choice",
    "hyperbaton": "multiple_choice",
    "logical_deduction_five_objects": "multiple_choice",
    "logical_deduction_seven_objects": "multiple_choice",
    "logical_deduction_three_objects": "multiple_choice",
    "movie_recommendation": "multiple_choice",
    "multistep_arithmetic_two": "numeric",
    "navigate": "binary",
    "object_counting": "numeric",
    "penguins_in_a_table": "multiple_choice",
    "reasoning_about_colored_objects": "multiple_choice",
    "ruin_names": "multiple_choice",
    "salient_translation_error_detection": "multiple_choice",
    "snarks": "multiple_choice",
    "sports_understanding": "binary",
    "temporal_sequences": "multiple_choice",
    "tracking_shuffled_objects_five_objects": "multiple_choice",
    "tracking_shuffled_objects_seven_objects": "multiple_choice",
    "tracking_shuffled_objects_three_objects": "multiple_choice",
    "web_of_lies": "binary",
    "word_sorting": "word_sort",
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Let me think.\nAnswer: 42", "42"),
        ("answer: (B) blue\n", "(B) blue"),
        ("Answer: 3\nWait, no.\nFinal Answer:  7 ", "7"),
        ("**Answer:** 12", "12"),
        ("**Answer:**\n12", "12"),
        ("Answer:\n\n12", "12"),
        ("no marker here", "no marker here"),
        ("", ""),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("response", "target", "expected"),
    [
        ("Answer: -5", "-5", 1),
        ("Answer: 5", "-5", 0),
        ("x = \u22125, so Answer: \u22125", "-5", 1),
        ("((2 - -5)) gives -7 - 3 ... Answer: -10", "-10", 1),
        ("Answer: 1,234", "1234", 1),
        ("Answer: 1,234,567 dollars", "1234567", 1),
        ("Answer: 1234", "1,234", 1),
        ("Answer: 8.0", "8", 1),
        ("Answer: 8.5", "8", 0),
        ("Answer: $5.", "5", 1),
        ("Answer: 12.", "12", 1),
        ("Answer: 50%", "50", 1),
        ("First 3 apples, then 4 more, so 7 in total.", "7", 1),
        ("First 3 apples, then 4 more, so 7 in total.", "3", 0),
        ("10-3", "3", 1),
        ("Answer: 7\nI am confident about the 2 steps.", "7", 1),
        ("Answer: twelve", "12", 0),
        ("Answer: 18 pounds", "18", 1),
        ("", "5", 0),
        ("no digits at all", "5", 0),
        ("Answer: 5", "not a number", 0),
    ],
)
def test_score_numeric(response, target, expected):
    assert score_numeric(response, target) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(B)", 1),
        ("B", 1),
        ("b)", 1),
        ("b", 1),
        ("B.", 1),
        ("Answer: (B) blue", 1),
        ("Answer: B", 1),
        ("answer: (b)", 1),
        ("**Answer:** **B**", 1),
        ("Options (A) and (C) are wrong, so the right one is (B).", 1),
        ("Answer: (A) red", 0),
        ("Answer: a good guess is C", 0),
        ("Answer: (C) although (B) was close", 0),
        ("I cannot tell.", 0),
        ("", 0),
    ],
)
def test_score_multiple_choice(response, expected):
    assert score_multiple_choice(response, "(B)") == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Answer: a", 1),
        ("Answer: a)", 1),
        ("Answer: A because it fits", 1),
        ("Answer: a good guess is C", 0),
        ("Answer: an option like (C)", 0),
    ],
)
def test_lowercase_a_is_only_an_option_when_marked(response, expected):
    assert score_multiple_choice(response, "(A)") == expected


@pytest.mark.parametrize(
    ("response", "target", "expected"),
    [
        ("Answer: yes.", "Yes", 1),
        ("Answer: Yes", "yes", 1),
        ("Answer: No, it is not.", "no", 1),
        ("Answer: no", "Yes", 0),
        ("Answer: yes or no", "yes", 0),
        ("Answer: True", "True", 1),
        ("Answer: FALSE", "False", 1),
        ("Answer: true", "False", 0),
        ("Answer: invalid", "invalid", 1),
        ("Answer: invalid", "valid", 0),
        ("Answer: valid", "valid", 1),
        ("At first it looked true, but the result is False.", "False", 1),
        ("", "Yes", 0),
        ("maybe", "Yes", 0),
    ],
)
def test_score_binary(response, target, expected):
    assert score_binary(response, target) == expected


@pytest.mark.parametrize(
    ("response", "target", "expected"),
    [
        ("Answer: apple banana cherry", "apple banana cherry", 1),
        ("Answer: Apple, Banana, Cherry.", "apple banana cherry", 1),
        ("Answer:   apple\tbanana   cherry  ", "apple banana cherry", 1),
        ("Answer: [apple, banana, cherry]", "apple banana cherry", 1),
        ("Sorted list below\napple banana cherry", "apple banana cherry", 1),
        ("Answer: banana apple cherry", "apple banana cherry", 0),
        ("Answer: apple banana", "apple banana cherry", 0),
        ("Answer: barn it&t malton", "barn it&t malton", 1),
        ("", "apple banana", 0),
    ],
)
def test_score_word_sort(response, target, expected):
    assert score_word_sort(response, target) == expected


@pytest.mark.parametrize(
    ("response", "target", "expected"),
    [
        ("Answer: ) ] }", ") ] }", 1),
        ("Answer:  )   ]  } ", ") ] }", 1),
        ("Answer: ) ]", ") ] }", 0),
        ("Answer: Paris.", "paris", 1),
        ("Answer: London", "paris", 0),
        ("", "paris", 0),
    ],
)
def test_score_exact(response, target, expected):
    assert score_exact(response, target) == expected


# Each reply is right only under its own kind's scorer, so a wrong dispatch fails.
@pytest.mark.parametrize(
    ("task_name", "response", "target"),
    [
        ("GSM8K", "Answer: 1,234.0", "1234"),
        ("BBH_date_understanding", "Answer: b) 12/01/2020", "(B)"),
        ("BBH_navigate", "Answer: Yes, definitely.", "Yes"),
        ("BBH_word_sorting", "Answer: Apple, Banana.", "apple banana"),
        ("BBH_dyck_languages", "Answer: )]", ") ]"),
    ],
)
def test_score_response_dispatches_on_kind(task_name, response, target):
    task = resolve_task(task_name)
    assert score_response(task, response, target) == 1
    assert score_exact(response, target) == 0


@pytest.mark.parametrize("task_name", ["GSM8K", "BBH_snarks", "BBH_web_of_lies", "BBH_word_sorting", "BBH_dyck_languages"])
@pytest.mark.parametrize("response", ["", "   ", "Answer:", "%%%$$$###", "\x00\ufffd", None, 17, ["a"]])
def test_garbage_replies_score_zero(task_name, response):
    assert score_response(resolve_task(task_name), response, "(A)" if task_name == "BBH_snarks" else "yes") == 0


def test_score_response_never_raises_on_bad_target():
    task = resolve_task("GSM8K")
    assert score_response(task, "Answer: 3", None) == 0
    assert score_response(task, "Answer: 3", 3) == 1


def test_every_real_bbh_target_scores_when_echoed():
    files = sorted((DATA_ROOT / "bbh").glob("*.json"))
    assert files, f"no BBH files under {DATA_ROOT / 'bbh'}"

    for path in files:
        task = resolve_task(f"BBH_{path.stem}")
        for example in json.loads(path.read_text())["examples"]:
            reply = f"Some reasoning.\nAnswer: {example['target']}"
            assert score_response(task, reply, example["target"]) == 1, (path.stem, example["target"])


def test_resolve_every_real_bbh_file():
    files = sorted((DATA_ROOT / "bbh").glob("*.json"))
    assert files
    for path in files:
        task = resolve_task(f"BBH_{path.stem}")
        assert task.name == f"BBH_{path.stem}"
        assert task.source == "bbh"
        assert task.subtask == path.stem
        assert task.kind == EXPECTED_BBH_KINDS[path.stem]


@pytest.mark.parametrize(("subtask", "kind"), sorted(EXPECTED_BBH_KINDS.items()))
def test_resolve_all_27_bbh_subtasks(subtask, kind):
    task = resolve_task(f"BBH_{subtask}")
    assert (task.name, task.source, task.subtask, task.kind) == (f"BBH_{subtask}", "bbh", subtask, kind)
    assert "Answer:" in task.format_instruction
    assert len(EXPECTED_BBH_KINDS) == 27


@pytest.mark.parametrize(
    ("subtask", "words"),
    [
        ("boolean_expressions", ("True", "False")),
        ("causal_judgement", ("Yes", "No")),
        ("navigate", ("Yes", "No")),
        ("web_of_lies", ("Yes", "No")),
        ("sports_understanding", ("Yes", "No")),
        ("formal_fallacies", ("valid", "invalid")),
    ],
)
def test_binary_instructions_name_the_tasks_own_words(subtask, words):
    instruction = resolve_task(f"BBH_{subtask}").format_instruction
    for word in words:
        assert f"Answer: {word}'" in instruction
    others = {"True", "Yes", "valid"} - {words[0]}
    assert not any(f"Answer: {w}'" in instruction for w in others)


@pytest.mark.parametrize("name", ["GSM8K", "GSM8K_DSPy", "gsm8k"])
def test_gsm8k_alias(name):
    task = resolve_task(name)
    assert (task.name, task.source, task.subtask, task.kind) == ("GSM8K", "gsm8k", None, "numeric")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("synthetic_object_counting", "numeric"),
        ("synthetic_multistep_arithmetic", "numeric"),
        ("synthetic_word_sorting", "word_sort"),
    ],
)
def test_resolve_synthetic(name, kind):
    task = resolve_task(name)
    assert (task.name, task.source, task.kind) == (name, "synthetic", kind)


@pytest.mark.parametrize(
    ("targets", "kind", "instruction_bit"),
    [
        (["(A)", "(C)", "(B)"], "multiple_choice", "(X)"),
        (["3", "-12", "1,024"], "numeric", "<number>"),
        (["yes", "No"], "binary", "Answer: Yes"),
        (["valid", "invalid"], "binary", "Answer: valid"),
        (["True", "False"], "binary", "Answer: True"),
        (["[ ]", "< >"], "free_form", "<answer>"),
        ([") ]", "}", "> ) ]"], "brackets", "only the closing brackets"),
        (["apple banana", "cat dog emu", "zebra"], "word_sort", "sorted words"),
        (["banana apple", "cat dog"], "free_form", "<answer>"),
        (["paris", "lima"], "free_form", "<answer>"),
        (["(A)"] * 9 + ["Monsters, Inc"], "multiple_choice", "(X)"),
        (["(A)"] * 8 + ["Monsters, Inc", "Inc"], "free_form", "<answer>"),
        (None, "free_form", "<answer>"),
    ],
)
def test_unknown_bbh_subtask_infers_kind(targets, kind, instruction_bit):
    task = resolve_task("BBH_some_new_subtask", kind_hint_targets=targets)
    assert task.kind == kind
    assert task.subtask == "some_new_subtask"
    assert instruction_bit in task.format_instruction


@pytest.mark.parametrize(("subtask", "kind"), sorted(EXPECTED_BBH_KINDS.items()))
def test_targets_of_each_real_subtask_infer_its_kind(subtask, kind):
    targets = [e["target"] for e in json.loads((DATA_ROOT / "bbh" / f"{subtask}.json").read_text())["examples"]]
    assert resolve_task(f"BBH_copy_of_{subtask}", kind_hint_targets=targets).kind == kind


@pytest.mark.parametrize("name", ["", "mmlu", "BBH_", "BBH_bad name!", "synthetic_chess", "GSM9K"])
def test_unknown_task_names_raise(name):
    with pytest.raises(TaskError) as info:
        resolve_task(name)
    message = str(info.value)
    assert "BBH_<subtask>" in message and "GSM8K_DSPy" in message and "synthetic_word_sorting" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("task_name", "must_contain"),
    [
        ("GSM8K", "Answer: <number>"),
        ("BBH_word_sorting", "sorted words"),
        ("BBH_snarks", "Answer: (X)"),
        ("BBH_boolean_expressions", "Answer: True"),
        ("BBH_dyck_languages", "only the closing brackets"),
    ],
)
def test_served_prompt_appends_the_tasks_own_format_line(task_name, must_contain):
    task = resolve_task(task_name)
    prompt = "Think carefully about the problem."
    served = served_prompt(prompt, task)
    assert served.splitlines() == [prompt, task.format_instruction]
    assert must_contain in served.splitlines()[-1]
    # A text that already ends with the line (an edit copied it) is not served with it twice.
    assert served_prompt(served, task) == served


def test_format_instructions_differ_per_kind():
    instructions = {
        format_instruction_for(kind)
        for kind in ("numeric", "multiple_choice", "binary", "word_sort", "brackets", "free_form")
    }
    assert len(instructions) == 6
    assert all("Answer:" in text for text in instructions)
    assert "Answer: <number>" in format_instruction_for("numeric")


def test_served_prompt_of_an_empty_text_is_the_format_line():
    task = resolve_task("BBH_navigate")
    assert served_prompt("", task) == task.format_instruction


@pytest.mark.parametrize("name", ["GSM8K", "BBH_snarks", "BBH_word_sorting", "BBH_navigate", "synthetic_object_counting"])
def test_starting_prompt_is_instructions_only(name):
    task = resolve_task(name)
    prompt = task.starting_prompt()
    assert "step by step" in prompt
    assert "Answer:" not in prompt and task.format_instruction not in prompt
