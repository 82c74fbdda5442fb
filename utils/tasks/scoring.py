"""0/1 scorers that read a model reply the way a grader does and compare it with a target.

Every scorer first finds the reply's final answer statement (utils.tasks.answers: the last ``Answer:``
line, else the last "the answer is ..." phrase, else the end of the reply) and reads only that, so
values mentioned along the way never count. Inside the statement each answer kind reads the value a
grader would: the stated number, the chosen option, the binary word with its negation, the word
sequence. Small models write messy replies, so spelling is forgiven ("$1,234.0", "b)", "Yes.")
but not the value, a hedge between two answers scores 0, and nothing here may raise.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from .answers import Statement, extract_answer, final_statement, first_sentence
from .choice import score_multiple_choice
from .registry import TaskSpec

# ---------------------------------------------------------------- numbers

# A minus sign only counts when it is not a binary operator ("10-3" is 10 and 3).
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-\u2212])?\$?\s?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_OR = re.compile(r"\s*,?\s*or\s*", re.IGNORECASE)


def _parse_number(match: re.Match[str]) -> Decimal | None:
    try:
        value = Decimal(match.group(1).replace(",", ""))
    except InvalidOperation:
        return None
    return -value if match.group(0).startswith(("-", "\u2212")) else value


def _stated_number(statement: Statement) -> Decimal | None:
    if not statement.explicit:
        # No statement: the conclusion at the end of the reply, which ends with its result.
        found = list(_NUMBER.finditer(statement.text))
        return _parse_number(found[-1]) if found else None
    clause = first_sentence(statement.text)
    # "3 + 4 = 7": an equation states its result after the last "=".
    clause = clause.rsplit("=", 1)[-1]
    numbers = list(_NUMBER.finditer(clause))
    for left, right in zip(numbers, numbers[1:], strict=False):
        if _OR.fullmatch(clause, left.end(), right.start()) and _parse_number(left) != _parse_number(right):
            return None  # "7 or 8" commits to neither
    # "7 (2 apples + 5 pears)", "12 items, i.e. 3 boxes of 4": the first number is the stated one.
    return _parse_number(numbers[0]) if numbers else None


def score_numeric(response: str, target: str) -> int:
    """1 if the number the reply states equals the target number."""
    wanted = _NUMBER.search((target or "").strip())
    expected = _parse_number(wanted) if wanted else None
    if expected is None:
        return 0
    got = _stated_number(final_statement(response))
    return int(got is not None and got == expected)


# ---------------------------------------------------------------- binary words

# Word pairs of binary tasks: the rival word tells us which words in a reply are answers.
_BINARY_PAIRS: tuple[tuple[str, str], ...] = (("true", "false"), ("yes", "no"), ("valid", "invalid"))
_NEGATORS = frozenset({"not", "never", "isn't", "aren't", "wasn't", "doesn't", "don't", "cannot", "can't"})
_RELATION = re.compile(r"\s(?:is|equals|evaluates\s+to|results\s+in|gives)\s|=", re.IGNORECASE)
_ASIDE = re.compile(r"\s(?:because|since|as|given\s+that|due\s+to)\s", re.IGNORECASE)
_EDGE_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"


def _words(text: str) -> list[str]:
    """Lower-case words with surrounding punctuation removed (inner marks like "it&t" survive)."""
    spaced = re.sub(r"[,;|/\[\]{}()\"`*]", " ", text.casefold().replace("\u2019", "'"))
    words = (w.strip(_EDGE_PUNCT) for w in spaced.split())
    return [w for w in words if w]


def _binary_values(text: str, pair: tuple[str, str]) -> list[str]:
    """Each answer word of the pair in text, flipped when "not" (or "isn't", ...) precedes it closely."""
    words = _words(text)
    values = []
    for index, word in enumerate(words):
        if word in pair:
            flipped = any(w in _NEGATORS for w in words[max(index - 2, 0):index])
            values.append(pair[1 - pair.index(word)] if flipped else word)
    return values


def _after_relation(text: str, pair: tuple[str, str]) -> str:
    """"True and False is False" states its value after the last "is" / "=" that is followed by one."""
    for relation in reversed(list(_RELATION.finditer(text))):
        if _binary_values(text[relation.end():], pair) and _binary_values(text[:relation.start()], pair):
            return text[relation.end():]
    return text


def _stated_binary(statement: Statement, pair: tuple[str, str]) -> str | None:
    if not statement.explicit:
        values = _binary_values(_after_relation(statement.text, pair), pair)
        return values[-1] if values else None
    clause = first_sentence(statement.text)
    aside = _ASIDE.search(clause)
    if aside and _binary_values(clause[:aside.start()], pair):
        clause = clause[:aside.start()]  # "True, because True and False is False" states True
    values = set(_binary_values(_after_relation(clause, pair), pair))
    # "yes or no" (or a contradiction) commits to nothing.
    return values.pop() if len(values) == 1 else None


def score_binary(response: str, target: str) -> int:
    """1 if the reply's yes/no-style word, negation applied ("not valid" = invalid), is the target's."""
    goal = _words(target or "")
    if len(goal) != 1:
        return score_exact(response, target)
    wanted = goal[0]
    pair = next((p for p in _BINARY_PAIRS if wanted in p), (wanted, ""))
    return int(_stated_binary(final_statement(response), pair) == wanted)


# ---------------------------------------------------------------- word sequences

_LIST_MARK = re.compile(r"^\s*(?:[-\u2022*+]|\(?\d+[.):]|[a-z][.)])\s+", re.IGNORECASE)
# "The sorted words are ...", "In alphabetical order: ...", "Here is the list: ...".
_LEAD_IN = re.compile(r"^[^:]*?\b(?:sort\w*|alphabetic\w*|order|words?|list)\b[^:]*?(?:\bare\b|\bis\b|:)\s*",
                      re.IGNORECASE)


# A bracketed aside holds words; a Dyck answer holds none.
_ASIDE_IN_BRACKETS = re.compile(r"[(\[{<][^()\[\]{}<>]*[A-Za-z][^()\[\]{}<>]*[)\]}>]")
_LAST_AND = re.compile(r",\s+and\s+", re.IGNORECASE)
_PAREN_ASIDE = re.compile(r"\([^()]*\)")


def _list_item(line: str) -> list[str]:
    """The one word of a list line ("1. apple", "- banana", "cherry"); [] for other lines and headings."""
    item = _words(_LIST_MARK.sub("", line))
    return item if len(item) == 1 and not line.rstrip().endswith(":") else []


def _list_block(lines: tuple[str, ...]) -> list[str]:
    """The words of the consecutive list lines at the start of lines."""
    words: list[str] = []
    for line in lines:
        item = _list_item(line)
        if not item:
            break
        words.extend(item)
    return words


def _word_sequences(statement: Statement) -> list[list[str]]:
    """Every reading of the statement as a word sequence: its line, a list below it, after a lead-in."""
    line = statement.text
    # "apple, banana, and cherry (sorted alphabetically)" lists three words.
    plain = _LAST_AND.sub(", ", _PAREN_ASIDE.sub(" ", line))
    readings = [_words(text) for text in (line, plain, first_sentence(line), _LEAD_IN.sub("", line, count=1))]
    if statement.explicit:
        # "Answer: apple" with "banana" and "cherry" on the lines below it, or a list under
        # "Answer: the sorted words are".
        below = statement.lines if _list_item(line) else statement.lines[1:]
        readings.append(_list_block(below))
    else:
        # The end of a reply may be a list under a heading ("Sorted:\n1. apple\n2. banana").
        start = len(statement.lines)
        while start > 0 and _list_item(statement.lines[start - 1]):
            start -= 1
        readings.append(_list_block(statement.lines[start:]))
    return readings


def score_word_sort(response: str, target: str) -> int:
    """1 if the reply's word sequence equals the target's, ignoring case, spacing, punctuation and list marks."""
    wanted = _words(target or "")
    if not wanted:
        return 0
    return int(any(reading == wanted for reading in _word_sequences(final_statement(response))))


# ---------------------------------------------------------------- brackets and free text

_BRACKETS = re.compile(r"[()\[\]{}<>]")


def score_brackets(response: str, target: str) -> int:
    """1 if the stated bracket sequence equals the target's, spacing ignored (")]" = ") ]")."""
    wanted = _BRACKETS.findall(target or "")
    if not wanted:
        return score_exact(response, target)
    stated = _ASIDE_IN_BRACKETS.sub(" ", final_statement(response).text)  # ") ] (closes the list)"
    return int(_BRACKETS.findall(stated) == wanted)


def _normalise_free(text: str) -> str:
    squashed = " ".join(text.split()).casefold()
    # Strip decoration models add around an answer, but not brackets: they can be content.
    squashed = squashed.strip("*`'\" ")
    return squashed.rstrip(".").strip()


def score_exact(response: str, target: str) -> int:
    """1 if the stated answer equals the target after case and whitespace normalisation."""
    wanted = _normalise_free(target or "")
    if not wanted:
        return 0
    return int(_normalise_free(extract_answer(response)) == wanted)


_SCORERS: dict[str, Callable[[str, str], int]] = {
    "numeric": score_numeric,
    "binary": score_binary,
    "word_sort": score_word_sort,
    "word": score_word_sort,  # one word: the same reading, a sequence of one
    "brackets": score_brackets,
    "free_form": score_exact,
}


def score_response(task: TaskSpec, response: str, target: str, *, question: str | None = None) -> int:
    """Score one reply for the task's answer kind; any failure counts as a wrong answer.

    ``question`` is the question the reply answers; multiple choice reads its ``Options:`` list to
    match an option given by its text.
    """
    try:
        if isinstance(target, int | float):
            target = str(target)
        if not isinstance(response, str) or not isinstance(target, str):
            return 0
        if task.kind == "multiple_choice":
            return 1 if score_multiple_choice(response, target, question if isinstance(question, str) else None) == 1 else 0
        scorer = _SCORERS.get(task.kind, score_exact)
        return 1 if scorer(response, target) == 1 else 0
    except Exception:  # noqa: BLE001 - a scorer bug must never kill a training run
        return 0
