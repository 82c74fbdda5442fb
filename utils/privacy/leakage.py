"""How much of a client's private examples a prompt repeats, and the guard that stops it leaving.

Prompts are text, and a small optimizer quotes the questions it was shown. Before an update leaves a
client it is audited against that client's own training examples (question followed by target):
  longest_run    the longest run of consecutive words it shares with any one example;
  shingle_share  the share of the client's distinct 8-word shingles that appear in it.
Words are runs of letters and digits, compared case-insensitively, so spacing, line breaks and
punctuation do not hide a copy. The guard (`--leak_guard`) then either sends the prompt as it is
(`off`), removes every span of at least `--leak_min_words` words copied from one example (`redact`),
or sends the round's start prompt instead (`reject`). Only the audit's numbers travel, never the
examples, so a Flower client audits its own update on its own node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from utils.reporting.tracking import RunLog
from utils.tasks.registry import Example

LEAK_GUARDS = ("off", "redact", "reject")
SHINGLE_WORDS = 8
REDACTED = "[private example removed]"

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class LeakGuard:
    mode: str = "redact"  # one of LEAK_GUARDS
    min_words: int = 8


@dataclass
class LeakAudit:
    """One client update's audit: what the optimizer wrote, and what the guard let leave the client."""

    longest_run: int  # of the prompt sent
    shingle_share: float
    written_longest_run: int  # of the prompt as the client's local steps wrote it
    written_shingle_share: float
    action: str = "none"  # "none" | "redacted" | "rejected"
    redacted_spans: int = 0  # spans removed from the prompt and the error text


@dataclass(frozen=True)
class _Words:
    words: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # character span of each word in the text


def _words(text: str) -> _Words:
    matches = list(_WORD.finditer(text))
    return _Words(tuple(m.group(0).casefold() for m in matches), tuple(m.span() for m in matches))


def example_words(example: Example) -> tuple[str, ...]:
    return _words(f"{example.question}\n{example.target}").words


def _common_runs(text: Sequence[str], example: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(end index in text, length) of every run of words the two share (dynamic programming over the
    example, visiting only the positions where a word of the text matches)."""
    positions: dict[str, list[int]] = {}
    for index, word in enumerate(text):
        positions.setdefault(word, []).append(index)
    previous: dict[int, int] = {}
    for word in example:
        current = {j: previous.get(j - 1, 0) + 1 for j in positions.get(word, ())}
        yield from current.items()
        previous = current


def _shingles(words: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def longest_copied_run(text: str, examples: Sequence[Example]) -> int:
    words = _words(text).words
    return max((length for ex in examples for _, length in _common_runs(words, example_words(ex))), default=0)


def shingle_share(text: str, examples: Sequence[Example]) -> float:
    """Distinct 8-word shingles of the examples that appear in the text, over all of them (0 if none)."""
    private = set().union(*(_shingles(example_words(ex)) for ex in examples)) if examples else set()
    if not private:
        return 0.0
    return len(private & _shingles(_words(text).words)) / len(private)


def _copied_spans(words: Sequence[str], examples: Sequence[Example], min_words: int) -> list[list[int]]:
    """[first, last] word indices (inclusive) of every run of min_words or more words copied from one
    example, overlapping and touching runs merged, in order."""
    covered = [(end - length + 1, end) for ex in examples for end, length in _common_runs(words, example_words(ex))
               if length >= min_words]
    merged: list[list[int]] = []
    for first, last in sorted(covered):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged


def copied_words(text: str, example: Example, min_words: int) -> tuple[set[int], int]:
    """(the positions of the text's words that lie in runs of min_words or more words copied from the
    example, the text's number of words)."""
    return copied_from(text, f"{example.question}\n{example.target}", min_words)


def copied_from(text: str, source: str, min_words: int) -> tuple[set[int], int]:
    """copied_words for any source text."""
    words = _words(text).words
    covered = [(end - length + 1, end) for end, length in _common_runs(words, _words(source).words)
               if length >= min_words]
    return {i for first, last in covered for i in range(first, last + 1)}, len(words)


def redact_copies(text: str, examples: Sequence[Example], min_words: int) -> tuple[str, int]:
    """The text with every span of min_words or more words copied from one example replaced by REDACTED
    (overlapping and touching copies become one span); returns it and the number of spans."""
    parsed = _words(text)
    merged = _copied_spans(parsed.words, examples, min_words)
    for first, last in reversed(merged):  # from the end, so earlier character offsets stay valid
        start, end = parsed.spans[first][0], parsed.spans[last][1]
        text = text[:start] + REDACTED + text[end:]
    return text, len(merged)


def guard_prompt(prompt: str, start_prompt: str, examples: Sequence[Example],
                 guard: LeakGuard) -> tuple[str, LeakAudit]:
    """The prompt the client may send, and its audit."""
    written_run, written_share = longest_copied_run(prompt, examples), shingle_share(prompt, examples)
    sent, action, spans = prompt, "none", 0
    if guard.mode == "redact":
        sent, spans = redact_copies(prompt, examples, guard.min_words)
        action = "redacted" if spans else "none"
    elif guard.mode == "reject" and written_run >= guard.min_words:
        sent, action = start_prompt, "rejected"
    if sent != prompt:
        run, share = longest_copied_run(sent, examples), shingle_share(sent, examples)
    else:
        run, share = written_run, written_share
    return sent, LeakAudit(run, share, written_run, written_share, action, spans)


# ---------------------------------------------------------------- the server's record of a round


def record_leakage(log: RunLog, round_index: int, audits: dict[str, LeakAudit]) -> dict[str, Any]:
    """One leak_audit event and comet metrics per client; the round's maxima and guard counts for its
    summary (results.json)."""
    for client, audit in audits.items():
        log.event("leak_audit", round=round_index, client=client, guard_action=audit.action,
                  **{k: v for k, v in vars(audit).items() if k != "action"})
        log.metric(f"leak/{client}/longest_run", audit.longest_run, round_index)
        log.metric(f"leak/{client}/shingle_share", audit.shingle_share, round_index)
    values = list(audits.values())
    summary = {
        "max_longest_run": max((a.longest_run for a in values), default=0),
        "max_shingle_share": max((a.shingle_share for a in values), default=0.0),
        "max_written_longest_run": max((a.written_longest_run for a in values), default=0),
        "max_written_shingle_share": max((a.written_shingle_share for a in values), default=0.0),
        "redacted_updates": sum(a.action == "redacted" for a in values),
        "rejected_updates": sum(a.action == "rejected" for a in values),
        "redacted_spans": sum(a.redacted_spans for a in values),
    }
    for key in ("max_longest_run", "max_shingle_share", "redacted_updates", "rejected_updates"):
        log.metric(f"leak/{key}", summary[key], round_index)
    return {"leakage": summary}


def leakage_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's run-wide leakage: the maxima over rounds and the guard's totals."""
    rounds = [r["leakage"] for r in history if r.get("leakage")]
    if not rounds:
        return {}
    summary = {key: max(r[key] for r in rounds) for key in rounds[0] if key.startswith("max_")}
    summary.update({key: sum(r[key] for r in rounds) for key in rounds[0] if not key.startswith("max_")})
    return {"leakage": summary}
