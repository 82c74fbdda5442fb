"""Junk that must never become a prompt: an optimizer or merge reply that parsed, yet holds no instructions.

Small models answer a rewrite request with an answer ("2. The answer is 2"), stray brackets ("]["), or a
question copied out of the feedback ("How many musical instruments do I have?"). Such a reply is rejected
like a reply in the wrong format: the local step keeps its prompt, the merge falls back to the
concatenation, and the reply is counted as its own kind, DEGENERATE. A reply is degenerate when
  - what is left once its answer statements are removed (utils.tasks.answers) has fewer than MIN_WORDS
    distinct words or fewer than MIN_LETTERS letters: a handful of characters or words, or no instruction
    left besides an answer;
  - fewer than half of its visible characters are letters: mostly punctuation or digits;
  - at least half of its words lie in runs of COPY_RUN_WORDS or more words copied from one question: of
    the batch a local step's reply was written from, or of the server's validation set for a merge (the
    server never holds the clients' examples). Wording that every question of a task shares is the
    task's own ("Sort the following words alphabetically: List:"), not a copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from utils.privacy.leakage import copied_words
from utils.tasks.answers import without_answer_statements
from utils.tasks.registry import Example

DEGENERATE = "degenerate"
MIN_WORDS = 3
MIN_LETTERS = 12
COPY_RUN_WORDS = 4
_WORD = re.compile(r"[^\W\d_]{2,}")  # two letters or more: "2." and "a" say nothing


def degenerate_reason(text: str, *question_sets: Sequence[Example]) -> str | None:
    """Why text cannot be a prompt ("too short", "no instruction, only an answer", "mostly punctuation
    or digits", "copied from a question"), or None when it can. question_sets: the questions it must not
    copy, one set per task (a client's batch; the server's validation questions of each task)."""
    visible = "".join(text.split())
    letters = sum(c.isalpha() for c in visible)
    instructions = without_answer_statements(text)
    if len(set(w.casefold() for w in _WORD.findall(instructions))) < MIN_WORDS or \
            sum(c.isalpha() for c in instructions) < MIN_LETTERS:
        return "no instruction, only an answer" if instructions.split() != text.split() else "too short"
    if letters < len(visible) / 2:
        return "mostly punctuation or digits"
    if copied_share(text, question_sets) >= 0.5:
        return "copied from a question"
    return None


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
