"""No junk kept: an optimizer or merge reply that parsed but holds no instructions is rejected and counted as
its own kind, "degenerate" (utils.federated.degenerate), in the local step, in the merge, in results.json and
in the summary. The junk is what SmolLM2-135M really wrote on the quickstart (`2. The answer is 2`, `][`,
pieces of its own requests, with the feedback it really got), and a training question copied whole; the good
prompts are ones a capable optimizer writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from test_training_logic import homo_clients, make_experiment, run

import textgrad as tg
from utils.federated.aggregation import aggregate_prompts, merge_request_texts
from utils.federated.client import (
    PROMPT_ROLE,
    Engines,
    LocalSettings,
    keep_new_prompt,
    local_step,
    make_optimizer,
)
from utils.federated.degenerate import RequestTexts, degenerate_reason
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


# ---------------------------------------------------------------- pieces of the request


FIRST_LAST = resolve_task("synthetic_first_last_word")
# Feedback SmolLM2-135M really wrote on the quickstart (seeds 42 and 43, round 1 and 2, temperature 0), each as
# one item of the optimizer request: it echoes its own request's role line and the judgement it was shown.
JUDGED = ("The system prompt the model answered with:\n<JUDGEMENT>\nChecking the final answer against the "
          "reference: incorrect; the expected final answer is {}.")
SHOULD_CHANGE = ("The system prompt the model answered with (the trained text plus the task's answer-format line) "
                 "should change to:\n<JUDGEMENT>\nChecking the final answer against the reference: incorrect; the "
                 "expected final answer is {}.")
ROUND_1_FEEDBACK = {
    "client0": ["The system prompt the model answered with (the trained text plus the task's answer-format line) "
                "\"earth\" and asked for a final answer to the question of what was in the list.",
                "The system prompt the model answered with (the trained text plus the task's answer-format line) "
                "\"fever\" and provided a final answer of \"garden.\"", JUDGED.format("guitar")],
    "client1": ['The system prompt the model answered with "eye" instead of "eye".',
                'The system prompt the model answered with "bark" instead of "dolphin."',
                'The system prompt the model answered with: "Mirror."'],
}
MERGED_1 = ("The system prompt the model answered with a JSON object that contains the merged system prompt, from "
            "the first word to the last.")
LIZARD_FEEDBACK = [f'{MERGED_1}\nFinish with a final line of the form "Answer: The last word is lizard."',
                   f'{MERGED_1}\nFinish with a final line of the form "Answer: answer" containing only that one '
                   "word.\n</JUDGEMENT>"]
WINTER_FEEDBACK = ["The system prompt the model answered with:\n<JUDGEMENT>\nChecking the final answer against the "
                   "reference: correct",
                   'The system prompt the model answered with "winter" and asked for a list of items. The answer was '
                   'given as "the first word of the list is winter".',
                   'The system prompt the model answered with:\n<OUTPUT>\nThe first word of the list is "garden."'
                   "\n</OUTPUT>"]


def optimizer_request(current: str, feedback: list[str]) -> RequestTexts:
    """The texts of a real local-step optimizer request (the client's optimizer and its constraints) for the
    prompt `current` with these feedback items, as the local step passes them."""
    prompt = tg.Variable(current, PROMPT_ROLE, requires_grad=True)
    for item in feedback:
        prompt.gradients.add(tg.Variable(item, "feedback to the prompt", requires_grad=False))
    optimizer = make_optimizer(prompt, ScriptedEngine(), LocalSettings(), None)
    optimizer.step()
    return RequestTexts(optimizer.request_texts[0], (current,))


def merge_request(prompts: list[str]) -> RequestTexts:
    # The quickstart's merge: the embedded server's JSON replies, seed 42's budget of 1638 tokens.
    return merge_request_texts(prompts, [FIRST_LAST], uid=False, structured_reply=True, limit=1638)


def test_the_optimizer_request_texts_are_ours_and_the_feedback_without_the_prompt() -> None:
    request = optimizer_request(STARTING_INSTRUCTIONS, ROUND_1_FEEDBACK["client1"])
    assert request.edited == (STARTING_INSTRUCTIONS,)
    assert request.ours[0].startswith("You rewrite a text that steers a language model")
    assert "Do not include any specific question or its answer." in request.ours[1]  # a constraint
    assert "Reply with the instructions rewritten to follow the feedback between <IMPROVED_VARIABLE>" in \
        request.ours[1]
    assert request.ours[2:] == tuple(ROUND_1_FEEDBACK["client1"])
    assert all(STARTING_INSTRUCTIONS not in text for text in request.ours)


REAL_JUNK = [  # (reply, the request it answered), as SmolLM2-135M wrote them on the quickstart
    ("[<JUDGEMENT>]Checking the final answer against the reference: incorrect",  # seed 42, round 1, client0
     optimizer_request(STARTING_INSTRUCTIONS, ROUND_1_FEEDBACK["client0"])),
    ("The system prompt the model answered with",  # seed 42, round 1, client1
     optimizer_request(STARTING_INSTRUCTIONS, ROUND_1_FEEDBACK["client1"])),
    (MERGED_1,  # seed 42, round 1's merge of the two above and client2's starting prompt
     merge_request(["[<JUDGEMENT>]Checking the final answer against the reference: incorrect",
                    "The system prompt the model answered with", STARTING_INSTRUCTIONS])),
    ("The last word is lizard.",  # seed 42, round 2, client2, which started from MERGED_1
     optimizer_request(MERGED_1, LIZARD_FEEDBACK)),
    ("The first word of the list is winter. The second sentence contains a question and an answer.",  # seed 43
     optimizer_request(STARTING_INSTRUCTIONS, WINTER_FEEDBACK)),
    ("The system prompt the model answered with:\n<JUDGEMENT>\nChecking the final answer against the reference: "
     "incorrect; the expected final answer is quarry.",  # seed 43, round 2, client0
     optimizer_request(STARTING_INSTRUCTIONS, [JUDGED.format("quarry"), SHOULD_CHANGE.format("lemon")])),
]


@pytest.mark.parametrize(("reply", "request_texts"), REAL_JUNK)
def test_pieces_of_the_request_are_degenerate(reply: str, request_texts: RequestTexts) -> None:
    assert degenerate_reason(reply, request=request_texts) == "copied from the request"
    assert degenerate_reason(reply) is None  # without its request, nothing else catches it


def test_a_merge_that_paraphrases_its_request_is_not_caught_but_its_inputs_are() -> None:
    # Seed 42's global prompt after round 2: a merge of MERGED_1 and "The last word is lizard." that keeps the
    # second and paraphrases the reply-format line; no run of 4 words of its request, and the server does not
    # know "lizard" as an answer. Both prompts it merged are caught where they were written (REAL_JUNK).
    merged = "The last word is lizard. }\n\nThis system prompt requires a JSON object with only one field"
    assert degenerate_reason(merged, request=merge_request([MERGED_1, "The last word is lizard."])) is None
    assert all(degenerate_reason(prompt, request=request) for prompt, request in REAL_JUNK[2:4])


def test_a_rewrite_that_keeps_the_prompt_and_takes_up_the_feedback_is_kept() -> None:
    # The feedback quotes the prompt whole, as SmolLM2's did ("The system prompt the model answered with:
    # <VARIABLE> ... </VARIABLE>"): keeping the prompt is not copying the request.
    feedback = ["The system prompt should tell the model to answer with only the first word of the list, "
                "exactly as it is written.", SHOULD_CHANGE.format("winter"),
                f"The system prompt the model answered with:\n<VARIABLE>\n{STARTING_INSTRUCTIONS}\n</VARIABLE>"]
    request = optimizer_request(STARTING_INSTRUCTIONS, feedback)
    added = "Answer with only the first word of the list, exactly as it is written."  # 13 words from the feedback
    assert degenerate_reason(f"{STARTING_INSTRUCTIONS} {added}", request=request) is None
    # The same sentence without the prompt it was added to is a copy of the feedback.
    assert degenerate_reason(added, request=request) == "copied from the request"


def test_a_merge_that_keeps_the_client_prompts_wording_is_kept() -> None:
    prompts = [f"{STARTING_INSTRUCTIONS} Give only the last word of the list when asked for the last word.",
               f"{STARTING_INSTRUCTIONS} Copy the word exactly as it is spelled in the list."]
    merged = (f"{STARTING_INSTRUCTIONS} Give only the last word of the list when asked for the last word. Copy the "
              "word exactly as it is spelled in the list.")
    assert degenerate_reason(merged, request=merge_request(prompts)) is None
    # Reply-format words in a merge are not: the same merge with the request's reply line appended is still
    # mostly the prompts' (kept), a merge made of that line alone is junk.
    reply_line = "The merged system prompt, from the first word to the last."
    assert degenerate_reason(f"{merged} {reply_line}", request=merge_request(prompts)) is None
    assert degenerate_reason(reply_line, request=merge_request(prompts)) == "copied from the request"


def test_a_restated_word_answer_is_an_answer_statement_but_letters_and_numbers_are_not() -> None:
    lizard = [Example("List: echo, zero, finger, lizard. What is the last word of the list?", "lizard")]
    assert degenerate_reason("The last word is lizard.", lizard) == "no instruction, only an answer"
    assert degenerate_reason("The last word is lizard.") is None  # no batch: nothing says it is an answer
    # Beside instructions, a sentence giving a batch question's answer away is junk too (seed 42's prompt).
    winter = [Example("List: winter, salt, amber, cloud. What is the first word of the list?", "winter")]
    seed_42 = ("The first word of the list is winter. The second sentence contains a question that requires you "
               "to answer it with your own response.")
    assert degenerate_reason(seed_42, winter) == "gives a question's answer"
    assert degenerate_reason(seed_42, lizard) is None  # another batch: winter answers nothing in it
    assert degenerate_reason("Read the whole list first. The last word is lizard.", lizard) == \
        "gives a question's answer"
    # Short answers end instructions too: option letters, numbers and a binary task's words stay instructions.
    assert degenerate_reason("Answer with one option, like (A).", [Example("Options: (A) x", "(A)")]) is None
    assert degenerate_reason("Count each item, up to 12.", [Example("How many?", "12")]) is None
    assert degenerate_reason("Say whether it is True.", [Example("not ( True ) is", "True")]) is None


def test_a_local_step_passes_its_request_a_copy_of_the_feedback_is_reverted() -> None:
    # The scripted feedback is "Tell the model to count every item one by one."
    prompt, result, engine = _step("Tell the model to count every item one by one.")
    assert prompt == COUNTING.starting_prompt() and result.format_failure == "degenerate"
    assert engine.count("answer") == 2  # never re-scored
    prompt, result, _ = _step(f"{COUNTING.starting_prompt()} Count every item one by one.")
    assert result.format_failure is None and result.accepted


def test_a_merge_passes_its_request_a_copy_of_its_instructions_falls_back_to_the_concatenation() -> None:
    engine = ScriptedEngine()
    copied = "Keep every distinct instruction and strategy they contain, state each only once."
    engine.generate = lambda *a, **k: f"<MERGED_PROMPT>{copied}</MERGED_PROMPT>"
    merged = aggregate_prompts(["Count every item.", "Add the counts up."], "summarization", [COUNTING], engine)
    assert merged.failure == "degenerate" and merged.prompt == "Count every item.\n\nAdd the counts up."
