"""The offline tasks whose answer the question shows: an option, Yes/No or one of its words (utils.tasks.synthetic_choice)."""

from __future__ import annotations

import re

import pytest

from utils.tasks.choice import parse_options
from utils.tasks.data import load_task_data
from utils.tasks.registry import resolve_task
from utils.tasks.scoring import score_response
from utils.tasks.synthetic import generate_examples

KINDS = {
    "synthetic_odd_one_out": "multiple_choice",
    "synthetic_category_member": "multiple_choice",
    "synthetic_alphabetical_first": "multiple_choice",
    "synthetic_next_in_list": "multiple_choice",
    "synthetic_category_yes_no": "binary",
    "synthetic_alphabetical_first_word": "word",
    "synthetic_first_last_word": "word",
}
CHOICE_TASKS = [name for name, kind in KINDS.items() if kind == "multiple_choice"]
WORD_TASKS = [name for name, kind in KINDS.items() if kind == "word"]
# Options per question (docs/quickstart.md's table gives chance from these): the odd one out among four.
OPTION_COUNTS = {"synthetic_odd_one_out": 4, "synthetic_category_member": 3, "synthetic_alphabetical_first": 3,
                 "synthetic_next_in_list": 3}


@pytest.mark.parametrize("task_name", list(KINDS))
def test_same_seed_same_questions_and_other_seed_others(task_name):
    assert generate_examples(task_name, 40, seed=7) == generate_examples(task_name, 40, seed=7)
    assert generate_examples(task_name, 40, seed=7) != generate_examples(task_name, 40, seed=8)
    # Prefix-stable, so every --split_sizes cuts the same fixed sequence of questions.
    assert generate_examples(task_name, 10, seed=7) == generate_examples(task_name, 40, seed=7)[:10]


@pytest.mark.parametrize("task_name", list(KINDS))
def test_a_pool_of_the_papers_size_has_distinct_questions_and_loads_offline(task_name):
    assert len({e.question for e in generate_examples(task_name, 250, seed=0)}) == 250
    data = load_task_data(resolve_task(task_name), "/nonexistent/dir", (12, 20, 20))
    assert (len(data.train), len(data.val), len(data.test)) == (12, 20, 20)
    assert data.task.source == "synthetic"


@pytest.mark.parametrize(("task_name", "kind"), list(KINDS.items()))
def test_task_names_resolve_to_the_answer_kind_the_scorer_reads(task_name, kind):
    task = resolve_task(task_name)
    assert (task.name, task.source, task.kind) == (task_name, "synthetic", kind)


def test_a_word_task_asks_for_one_word():
    assert resolve_task("synthetic_first_last_word").format_instruction == (
        "Finish with a final line of the form 'Answer: <word>' containing only that one word.")


@pytest.mark.parametrize("task_name", CHOICE_TASKS)
def test_the_target_is_one_of_the_listed_options(task_name):
    assert set(CHOICE_TASKS) == set(OPTION_COUNTS)
    letters_used = set()
    for example in generate_examples(task_name, 200, seed=3):
        options = parse_options(example.question)
        assert re.fullmatch(r"\([A-D]\)", example.target), example.target
        assert example.target[1] in options, example.question
        assert len(set(options.values())) == len(options) == OPTION_COUNTS[task_name]  # none listed twice
        letters_used.add(example.target)
    # The answer is not always in one place: every letter is used.
    assert letters_used == {f"({letter})" for letter in "ABCD"[:OPTION_COUNTS[task_name]]}


@pytest.mark.parametrize("task_name", WORD_TASKS)
def test_a_word_target_is_one_lower_case_word_of_its_question(task_name):
    for example in generate_examples(task_name, 200, seed=4):
        assert re.fullmatch(r"[a-z]+", example.target), example.target
        assert example.target in re.findall(r"[a-z]+", example.question), example.question


def _answer_text(example):
    return parse_options(example.question)[example.target[1]]


def test_odd_one_out_is_the_only_item_of_its_kind():
    # Hand-written: seed 0's first question mixes three tools with a vegetable.
    first = generate_examples("synthetic_odd_one_out", 1, seed=0)[0]
    assert parse_options(first.question) == {"A": "wrench", "B": "drill", "C": "cabbage", "D": "shovel"}
    assert first.target == "(C)"


def test_category_member_names_the_asked_category():
    first, second = generate_examples("synthetic_category_member", 2, seed=0)
    assert first.question.startswith("Which of the following is a tool?\n")
    assert (_answer_text(first), _answer_text(second)) == ("mallet", "apple")


def test_alphabetical_first_answers_the_first_word():
    for example in generate_examples("synthetic_alphabetical_first", 200, seed=1):
        words = list(parse_options(example.question).values())
        assert _answer_text(example) == sorted(words)[0], example.question
        assert len({w[0] for w in words}) == len(words)  # first letters differ


def test_alphabetical_first_word_answers_a_listed_word_that_sorts_first():
    pattern = re.compile(r"Which of these words comes first in alphabetical order: (\w+), (\w+), (\w+)\?")
    for example in generate_examples("synthetic_alphabetical_first_word", 200, seed=1):
        words = pattern.fullmatch(example.question).groups()
        assert example.target == sorted(words)[0], example.question


def test_next_in_list_answers_the_following_word():
    pattern = re.compile(r"List: (.+)\. Which word comes right after (\w+) in the list\?")
    for example in generate_examples("synthetic_next_in_list", 200, seed=1):
        listed, asked = pattern.match(example.question).groups()
        words = listed.split(", ")
        assert _answer_text(example) == words[words.index(asked) + 1], example.question
        assert asked not in parse_options(example.question).values()


def test_first_last_word_answers_that_end_of_the_list():
    pattern = re.compile(r"List: (.+)\. What is the (first|last) word of the list\?")
    asked = set()
    for example in generate_examples("synthetic_first_last_word", 200, seed=1):
        listed, which = pattern.fullmatch(example.question).groups()
        words = listed.split(", ")
        assert len(words) == len(set(words)) == 4
        assert example.target == (words[0] if which == "first" else words[3]), example.question
        asked.add(which)
    assert asked == {"first", "last"}


def test_yes_no_questions_are_balanced_and_answer_category_membership():
    examples = generate_examples("synthetic_category_yes_no", 100, seed=2)
    yes = sum(e.target == "Yes" for e in examples)
    assert 35 <= yes <= 65 and {e.target for e in examples} == {"Yes", "No"}
    first = [(e.question, e.target) for e in generate_examples("synthetic_category_yes_no", 8, seed=0)]
    assert first == [("Is a sweater one of the vegetables?", "No"), ("Is a car one of the tools?", "No"),
                     ("Would you call a pea a musical instrument?", "No"), ("Is a saw one of the vegetables?", "No"),
                     ("Is a bus one of the animals?", "No"), ("Would you call a potato a vegetable?", "Yes"),
                     ("Is a taxi one of the fruits?", "No"), ("Is a banjo a musical instrument?", "Yes")]


def _score(task_name, reply, index=0):
    example = generate_examples(task_name, index + 1, seed=0)[index]
    return score_response(resolve_task(task_name), reply, example.target, question=example.question)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer: (C)", 1),
        ("The odd one out is cabbage, a vegetable.\nAnswer: cabbage", 1),
        ("wrench, drill and shovel are tools. So the answer is C.", 1),
        ("Answer: (A)", 0),
        ("Answer: wrench", 0),
        ("Answer: (C) or (D)", 0),  # a hedge commits to nothing
        ("The answer is not cabbage but wrench.", 0),
    ],
)
def test_scorer_reads_odd_one_out_replies(reply, expected):
    assert _score("synthetic_odd_one_out", reply) == expected  # (C) cabbage among tools


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer: No", 1),
        ("A sweater is clothing, not a vegetable.\nAnswer: no.", 1),
        ("Answer: Yes", 0),
        ("Answer: Not no", 0),
        ("Answer: Yes or No", 0),
        ("A sweater is indeed a piece of clothing.", 0),  # no yes or no: nothing stated
    ],
)
def test_scorer_reads_yes_no_replies(reply, expected):
    assert _score("synthetic_category_yes_no", reply) == expected  # "Is a sweater one of the vegetables?" No


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer: lemon", 1),
        ('The last word of the list is "lemon."', 1),
        ("Answer: Lemon.", 1),
        ("Answer: actor", 0),
        ("Answer: actor, walnut, falcon, lemon", 0),  # repeating the list names no word
        ('The last word of the list is "lemonade."', 0),
        ("Answer: lemon or actor", 0),
    ],
)
def test_scorer_reads_one_word_replies(reply, expected):
    # "List: actor, walnut, falcon, lemon. What is the last word of the list?" lemon
    assert _score("synthetic_first_last_word", reply) == expected
