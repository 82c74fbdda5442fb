"""Junk that must never become a prompt: an optimizer or merge reply that parsed, yet holds no instructions.

Small models answer a rewrite request with an answer ("2. The answer is 2"), stray brackets ("]["), a
question copied out of the feedback ("How many musical instruments do I have?"), or pieces of the request
itself ("The system prompt the model answered with"). Such a reply is rejected like a reply in the wrong
format: the local step keeps its prompt, the merge falls back to the concatenation, and the reply is counted
as its own kind, DEGENERATE. A reply is degenerate when
  - what is left once its answer statements are removed has fewer than MIN_WORDS distinct words or fewer
    than MIN_LETTERS letters: a handful of characters or words, or no instruction left besides an answer.
    Answer statements are "Answer: ..." and "the answer is ..." (utils.tasks.answers), and any sentence that
    ends with the answer of one of the questions, when that answer is a word of 3 letters or more that is
    not a binary task's ("The last word is lizard."; never "(A)", "12" or "True");
  - beside instructions, it has such a sentence giving a question's answer away: a prompt must not carry
    one question's answer (the optimizer is told so), and a sentence that does is what a small model
    writes from the feedback, not an instruction;
  - fewer than half of its visible characters are letters: mostly punctuation or digits;
  - at least half of its words lie in runs of COPY_RUN_WORDS or more words copied from one question: of
    the batch a local step's reply was written from, or of the server's validation set for a merge (the
    server never holds the clients' examples). Wording that every question of a task shares is the
    task's own ("Sort the following words alphabetically: List:"), not a copy;
  - at least ECHOED_SHARE of its words lie in such runs copied from the request it answers
    (RequestTexts.ours: our instructions, template and reply-format line, and the feedback the request
    carried) and not from the prompts it edits (RequestTexts.edited: a rewrite keeps most of its prompt,
    a merge its inputs). Six replies SmolLM2-135M wrote on the quickstart (tests/test_degenerate.py) were
    47% ("The first word of the list is winter. The second sentence contains a question and an answer.",
    its first half from the feedback), 61% (a merge) and four times 100% copied. A rewrite that keeps the
    22-word starting prompt reaches 45% only by adding a sentence of 18 words or more copied word for word
    from the feedback. Words, not meaning: a reply that paraphrases its request passes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from utils.privacy.leakage import copied_from, copied_words
from utils.tasks.answers import without_answer_statements
from utils.tasks.registry import BINARY_ANSWERS, Example

DEGENERATE = "degenerate"
MIN_WORDS = 3
MIN_LETTERS = 12
COPY_RUN_WORDS = 4
COPIED_SHARE = 0.5
ECHOED_SHARE = 0.45
MIN_ANSWER_LETTERS = 3
_WORD = re.compile(r"[^\W\d_]{2,}")  # two letters or more: "2." and "a" say nothing
_SENTENCES = re.compile(r"(?<=[.!?;])\s+|\n+")


@dataclass(frozen=True)
class RequestTexts:
    """The request a reply answers, as two kinds of text: ours, which a reply must not be made of (the
    system prompt, the template with its fields, the reply-format line, the feedback it carried), and the
    prompts under edit, which a reply may keep."""

    ours: tuple[str, ...] = ()
    edited: tuple[str, ...] = ()


def degenerate_reason(text: str, *question_sets: Sequence[Example], request: RequestTexts | None = None) -> str | None:
    """Why text cannot be a prompt ("too short", "no instruction, only an answer", "mostly punctuation
    or digits", "gives a question's answer", "copied from a question", "copied from the request"), or None
    when it can. question_sets:
    the questions it must not copy or answer, one set per task (a client's batch; the server's validation
    questions of each task). request: the texts of the request the reply answers."""
    visible = "".join(text.split())
    letters = sum(c.isalpha() for c in visible)
    kept = without_restated_answers(text, question_sets)
    instructions = without_answer_statements(kept)
    if len(set(w.casefold() for w in _WORD.findall(instructions))) < MIN_WORDS or \
            sum(c.isalpha() for c in instructions) < MIN_LETTERS:
        return "no instruction, only an answer" if instructions.split() != text.split() else "too short"
    if letters < len(visible) / 2:
        return "mostly punctuation or digits"
    if kept.split() != text.split():  # instructions, and a sentence giving one question's answer away
        return "gives a question's answer"
    if copied_share(text, question_sets) >= COPIED_SHARE:
        return "copied from a question"
    if request is not None and echoed_share(text, request) >= ECHOED_SHARE:
        return "copied from the request"
    return None


def without_restated_answers(text: str, question_sets: Sequence[Sequence[Example]]) -> str:
    """The text without its sentences that end with the answer of one of the questions, for answers that are
    one word of MIN_ANSWER_LETTERS letters or more and no binary task's: an option letter, a number or
    "True" ends many an instruction, a word the question asked for does not."""
    answers = {target for questions in question_sets for ex in questions
               if (target := ex.target.strip().casefold()).isalpha() and len(target) >= MIN_ANSWER_LETTERS
               and target not in BINARY_ANSWERS}
    if not answers:
        return text
    sentences = _SENTENCES.split(text)
    return "\n".join(s for s in sentences if not (words := _WORD.findall(s)) or words[-1].casefold() not in answers)


def echoed_share(text: str, request: RequestTexts) -> float:
    """The share of text's words copied from our side of its request (runs of COPY_RUN_WORDS words or more)
    and not from the prompts it edits."""
    copied: set[int] = set()
    kept: set[int] = set()
    words = 0
    for source, into in [(t, copied) for t in request.ours] + [(t, kept) for t in request.edited]:
        positions, words = copied_from(text, source, COPY_RUN_WORDS)
        into.update(positions)
    return len(copied - kept) / words if words else 0.0


def copied_share(text: str, question_sets: Sequence[Sequence[Example]]) -> float:
    """The share of text's words copied from the questions (runs of COPY_RUN_WORDS words or more). Wording
    that every question of a set of two or more has is its task's: it counts neither as copied nor in the
    share."""
    copied: set[int] = set()
    task_wording: set[int] = set()
    words = 0
    for questions in question_sets:
        copies = [copied_words(text, ex, COPY_RUN_WORDS) for ex in questions]
        if not copies:
            continue
        words = copies[0][1]
        copied.update(*(c for c, _ in copies))
        if len(copies) > 1:
            task_wording.update(set.intersection(*(c for c, _ in copies)))
    own_words = words - len(task_wording)
    return len(copied - task_wording) / own_words if own_words > 0 else 0.0
