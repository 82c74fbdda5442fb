"""The last check before anything leaves a client: no verbatim copy of a training question.

The optimizer is told not to quote examples, but small models do; a prompt that quotes a private
question would carry it to the server. Matching ignores differences in whitespace.
"""

from __future__ import annotations

import re

from utils.client import ClientUpdate
from utils.tasks import Example

REDACTED = "[private example removed]"
# Shorter questions could match ordinary prompt text; every benchmark question is longer.
MIN_QUESTION_CHARS = 20


def question_patterns(examples: list[Example]) -> list[re.Pattern[str]]:
    patterns = []
    for example in examples:
        words = example.question.split()
        if len(" ".join(words)) >= MIN_QUESTION_CHARS:
            patterns.append(re.compile(r"\s+".join(map(re.escape, words))))
    return patterns


def redact(text: str, patterns: list[re.Pattern[str]]) -> tuple[str, int]:
    removed = 0
    for pattern in patterns:
        text, count = pattern.subn(REDACTED, text)
        removed += count
    return text, removed


def redact_update(update: ClientUpdate, examples: list[Example]) -> int:
    """Remove the client's training questions from every text of its update; returns how many."""
    patterns = question_patterns(examples)
    update.prompt, in_prompt = redact(update.prompt, patterns)
    update.start_prompt, in_start = redact(update.start_prompt, patterns)
    in_error = 0
    if update.error:
        update.error, in_error = redact(update.error, patterns)
    return in_prompt + in_start + in_error
