"""0/1 scorers that compare a model reply with a target.

Small models write messy replies, so every scorer is lenient about spelling
("$1,234.0", "b)", "Yes.") but strict about the value, and nothing here may
raise: an unreadable reply is simply wrong.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from utils.tasks import TaskSpec

_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)

# A minus sign only counts when it is not a binary operator ("10-3" is 10 and 3).
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-\u2212])?\$?\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_MINUS = re.compile(r"^[-\u2212]")

_PAREN_OPTION = re.compile(r"\(\s*([A-Za-z])\s*\)")
_BARE_OPTION = re.compile(r"^\W*([A-Za-z])([).:,*\]]|\s|$)")

# Word pairs of binary tasks: the rival word tells us which words in a reply are answers.
_BINARY_PAIRS: tuple[frozenset[str], ...] = (
    frozenset({"true", "false"}),
    frozenset({"yes", "no"}),
    frozenset({"valid", "invalid"}),
)

_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"


def extract_answer(response: str) -> str:
    """Text after the last ``Answer:`` on its line (or the next non-empty line); else the whole reply."""
    text = response or ""
    marks = list(_ANSWER_MARK.finditer(text))
    if not marks:
        return text.strip()
    # Markdown emphasis around the marker ("**Answer:** 42") is decoration, not answer.
    lines = [line.strip().strip("*_`").strip() for line in text[marks[-1].end():].split("\n")]
    if lines[0]:
        return lines[0]
    # "Answer:\n42" puts the value on the next line.
    return next((line for line in lines[1:] if line), "")


def _parse_number(match: re.Match[str]) -> Decimal | None:
    digits = match.group(1).replace(",", "")
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    return -value if _MINUS.match(match.group(0)) else value


def _last_number(text: str) -> Decimal | None:
    matches = list(_NUMBER.finditer(text))
    return _parse_number(matches[-1]) if matches else None


def _has_answer_mark(text: str) -> bool:
    return _ANSWER_MARK.search(text) is not None


def score_numeric(response: str, target: str) -> int:
    """1 if the final number of the reply equals the target number."""
    expected = _last_number((target or "").strip())
    if expected is None:
        return 0
    got = _last_number(extract_answer(response))
    return int(got is not None and got == expected)


def _option_letter(text: str, prefer_last: bool) -> str | None:
    parens = _PAREN_OPTION.findall(text)
    if parens:
        return (parens[-1] if prefer_last else parens[0]).upper()
    bare = _BARE_OPTION.match(text.strip())
    if not bare:
        return None
    letter, follower = bare.group(1), bare.group(2)
    # A lowercase letter followed by a space is the article "a" or a word, not an option;
    # "b)" and a lone "b" are options.
    if letter.islower() and follower.isspace():
        return None
    return letter.upper()


def score_multiple_choice(response: str, target: str) -> int:
    """1 if the chosen option letter equals the target's letter, e.g. "(B)"."""
    wanted = _option_letter((target or "").strip(), prefer_last=False)
    if wanted is None:
        return score_exact(response, target)
    text = response or ""
    if _has_answer_mark(text):
        got = _option_letter(extract_answer(text), prefer_last=False)
    elif len(text.split()) <= 2:
        got = _option_letter(text, prefer_last=True)
    else:
        # Without an Answer: line only a parenthesised option is trusted, and the
        # conclusion is usually the last one mentioned.
        parens = _PAREN_OPTION.findall(text)
        got = parens[-1].upper() if parens else None
    return int(got == wanted)


def _words(text: str) -> list[str]:
    """Lower-case words with surrounding punctuation removed (inner marks like "it&t" survive)."""
    spaced = re.sub(r"[,;|/\[\]{}()\"`*]", " ", text.casefold())
    words = (w.strip(_EDGE_PUNCT) for w in spaced.split())
    return [w for w in words if w]


def score_binary(response: str, target: str) -> int:
    """1 if the reply's yes/no-style word equals the target word."""
    goal = _words(target or "")
    if len(goal) != 1:
        return score_exact(response, target)
    wanted = goal[0]
    pair = next((p for p in _BINARY_PAIRS if wanted in p), frozenset({wanted}))
    text = response or ""
    if _has_answer_mark(text):
        found = [w for w in _words(extract_answer(text)) if w in pair]
        # "Answer: yes or no" commits to nothing; "Answer: No, it is not." commits to no.
        return int(bool(found) and set(found) == {wanted})
    found = [w for w in _words(text) if w in pair]
    return int(bool(found) and found[-1] == wanted)


def score_word_sort(response: str, target: str) -> int:
    """1 if the reply's word sequence equals the target's, ignoring case, spacing and punctuation."""
    wanted = _words(target or "")
    if not wanted:
        return 0
    text = response or ""
    candidates = [extract_answer(text)]
    if not _has_answer_mark(text):
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            candidates.append(lines[-1])
    return int(any(_words(c) == wanted for c in candidates))


def _normalise_free(text: str) -> str:
    squashed = " ".join(text.split()).casefold()
    # Strip decoration models add around an answer, but not brackets: they are content in dyck_languages.
    squashed = squashed.strip("*`'\" ")
    return squashed.rstrip(".").strip()


def score_exact(response: str, target: str) -> int:
    """1 if the extracted answer equals the target after case and whitespace normalisation."""
    wanted = _normalise_free(target or "")
    if not wanted:
        return 0
    return int(_normalise_free(extract_answer(response)) == wanted)


_SCORERS: dict[str, Callable[[str, str], int]] = {
    "numeric": score_numeric,
    "multiple_choice": score_multiple_choice,
    "binary": score_binary,
    "word_sort": score_word_sort,
    "free_form": score_exact,
}


def score_response(task: TaskSpec, response: str, target: str) -> int:
    """Score one reply for the task's answer kind; any failure counts as a wrong answer."""
    try:
        if isinstance(target, int | float):
            target = str(target)
        if not isinstance(response, str) or not isinstance(target, str):
            return 0
        scorer = _SCORERS.get(task.kind, score_exact)
        return 1 if scorer(response, target) == 1 else 0
    except Exception:  # noqa: BLE001 - a scorer bug must never kill a training run
        return 0
