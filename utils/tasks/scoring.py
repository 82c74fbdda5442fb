"""0/1 scorers that read a model reply the way a grader does and compare it with a target.

Every scorer first finds the reply's final answer statement (the last ``Answer:`` line, else the
last "the answer is ..." phrase, else the end of the reply) and reads only that, so values
mentioned along the way never count. Inside the statement each answer kind reads the value a
grader would: the stated number, the chosen option, the binary word with its negation, the word
sequence. Small models write messy replies, so spelling is forgiven ("$1,234.0", "b)", "Yes.")
but not the value, a hedge between two answers scores 0, and nothing here may raise.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from utils.tasks.registry import TaskSpec

# ---------------------------------------------------------------- the final answer statement

# "Answer:", "**Final Answer**:", GSM8K's "#### 18" and LaTeX's "\boxed{18}" all open a final answer;
# a quoted "'Answer: <number>'" is the format instruction repeated, not an answer.
_ANSWER_MARK = re.compile(r"(?<!['\"\u2018\u201c])\banswer[*_\s]*[:\uff1a]|####|\\boxed\s*\{", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|(?:correct|right|best)\s+(?:option|choice))\s+"
    r"(?:is|would\s+be|should\s+be|will\s+be|must\s+be)\b[\s:]*",
    re.IGNORECASE,
)
_DECORATION = re.compile(r"[*`]+|\\(?:boxed|text|textbf|mathrm)\s*\{")
# A sentence ends at . ! ? or ; followed by a space or the end ("8.0" and "1,234.00" do not end one).
_SENTENCE_END = re.compile(r"(?<=\S)[.!?;](?=\s|$)")


@dataclass(frozen=True)
class Statement:
    """The part of a reply that states its final answer."""

    text: str  # the statement's first line, decoration removed
    lines: tuple[str, ...]  # that line and the reply's lines after it (answers written as lists)
    explicit: bool  # True when an Answer: line or "the answer is" phrase stated it


def _clean(line: str) -> str:
    return " ".join(_DECORATION.sub(" ", line).split())


def _statement_after(text: str, start: int) -> Statement:
    lines = [_clean(line) for line in text[start:].split("\n")]
    while lines and not lines[0]:
        lines.pop(0)  # "Answer:\n42" puts the value on the next line
    if not lines:
        return Statement("", (), True)
    first = lines[0]
    # "Answer: So the answer is (B)" states it twice; the phrase's value is the answer.
    phrases = list(_ANSWER_PHRASE.finditer(first))
    if phrases and phrases[-1].end() < len(first):
        first = first[phrases[-1].end():]
    return Statement(first, (first, *lines[1:]), True)


def final_statement(response: str) -> Statement:
    """The reply's final answer statement: last Answer: line, else last "the answer is", else its end."""
    text = response if isinstance(response, str) else ""
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        return _statement_after(text, marks[-1].end())
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        return _statement_after(text, phrases[-1].end())
    lines = [_clean(line) for line in text.split("\n")]
    content = [line for line in lines if line]
    return Statement(content[-1] if content else "", tuple(content), False)


def extract_answer(response: str) -> str:
    """The text of the reply's final answer statement (see ``final_statement``)."""
    return final_statement(response).text


def _first_sentence(text: str) -> str:
    end = _SENTENCE_END.search(text)
    return text[:end.start()] if end else text


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
    clause = _first_sentence(statement.text)
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


# ---------------------------------------------------------------- multiple choice

# A letter written as an option: "(B)", "Option B", "choice (b)", "b)".
_OPTION_LETTER = re.compile(
    r"\(\s*([A-Za-z])\s*\)"
    r"|\b(?:option|choice|letter)\s*[:#]?\s*\(?([A-Za-z])(?![\w'\u2019])\)?"
    r"|(?<![\w(])([A-Za-z])\)",
    re.IGNORECASE,
)
# A capital letter standing alone ("B", "B.", "**B**"); "A" and "I" may also be English words.
_BARE_LETTER = re.compile(r"(?<![\w'\u2019&/.-])([A-Z])(?![\w'\u2019&/-])")
_WORD_AFTER = re.compile(r"\s+[a-z]")
_LONE_LETTER = re.compile(r"[^\w]*([A-Za-z])[^\w]*")
_OPTION_LINE = re.compile(r"^[ \t]*\(([A-Za-z])\)[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_LETTER_TARGET = re.compile(r"\(?\s*([A-Za-z])\s*\)?")
_NEGATED_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|\brather\s+than|\binstead\s+of|\bexcept|\bnor)[\s,:]*(?:\b(?:the|an?)\s+)?"
    r"(?:(?:option|choice|answer)\s*)?$",
    re.IGNORECASE,
)
# Lower case only: "(A) Isn't it just the best?" is an option's text, "(A) isn't right" rejects (A).
_NEGATED_AFTER = re.compile(r"^\s*(?:(?:is|was|would\s+be)\s+(?:not|wrong|incorrect)|(?:isn't|wasn't)\s+(?:right|correct))\b")
# What joins two answers into a hedge: "(A) or (B)", "(A)/(B)", "(A), (B)", "(A) and/or (B)".
_HEDGE_JOIN = re.compile(r"\s*(?:,|/|\||&|\bor\b|\band\b|\band/or\b|\bvs\.?|\bversus\b)?\s*", re.IGNORECASE)
_TEXT_TOKEN = re.compile(r"[\w&']+")
_LABEL_GAP = re.compile(r"[\s:.\-\u2013\u2014]*")
_UNLISTED = frozenset({"<target text>"})


@dataclass(frozen=True)
class _Mention:
    letters: frozenset[str]
    start: int
    end: int


def parse_options(question: str | None) -> dict[str, str]:
    """Option letter -> option text from a question's ``Options:`` list ("(A) Monsters" lines)."""
    return dict(_listed_options(question)[0]) if isinstance(question, str) else {}


@functools.lru_cache(maxsize=1024)
def _listed_options(question: str) -> tuple[dict[str, str], dict[tuple[str, ...], frozenset[str]]]:
    """(letter -> text, normalised text -> the letters listed with it); two options may share a text.

    Cached: training scores every question many times. Callers must not change what it returns.
    """
    listed = question.rsplit("Options:", 1)[-1]
    options = {m.group(1).upper(): m.group(2) for m in _OPTION_LINE.finditer(listed)}
    texts: dict[tuple[str, ...], frozenset[str]] = {}
    for letter, option in options.items():
        tokens = _norm_text(option)
        if tokens:
            texts[tokens] = texts.get(tokens, frozenset()) | {letter}
    return options, texts


def _norm_text(text: str) -> tuple[str, ...]:
    return tuple(_TEXT_TOKEN.findall(text.casefold().replace("\u2019", "'")))


def _gold_letters(target: str, options: dict[str, str]) -> frozenset[str]:
    """The options that mean the target: its letter, or the option(s) whose text it is.

    A few BBH targets are option texts that the question's list split at commas ("Monsters, Inc"
    listed as "(A) Monsters" and "(B) Inc"); any option of such a run names the target.
    """
    letter = _LETTER_TARGET.fullmatch(target.strip())
    if letter:
        return frozenset({letter.group(1).upper()})
    wanted = _norm_text(target)
    letters = sorted(options)
    same = frozenset(k for k in letters if _norm_text(options[k]) == wanted)
    if same or not wanted:
        return same
    for first in range(len(letters)):
        joined: tuple[str, ...] = ()
        for last in range(first, len(letters)):
            joined += _norm_text(options[letters[last]])
            if joined == wanted:
                return frozenset(letters[first:last + 1])
            if joined != wanted[:len(joined)]:
                break
    return frozenset()


@functools.lru_cache(maxsize=4096)
def _text_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    body = r"\W+".join(re.escape(t) for t in tokens)
    return re.compile(rf"(?<![\w&']){body}(?![\w&'])", re.IGNORECASE)


def _text_mentions(text: str, texts: dict[tuple[str, ...], frozenset[str]]) -> list[_Mention]:
    """Where option texts occur as whole phrases; a phrase inside a longer matched one is dropped."""
    found = [_Mention(letters, m.start(), m.end())
             for tokens, letters in texts.items() if tokens
             for m in _text_pattern(tokens).finditer(text.replace("\u2019", "'"))]
    return [m for m in found
            if not any(o is not m and o.start <= m.start and m.end <= o.end and o.end - o.start > m.end - m.start
                       for o in found)]


def _letter_mentions(text: str, allowed: set[str]) -> list[_Mention]:
    found = []
    for match in _OPTION_LETTER.finditer(text):
        letter = next(g for g in match.groups() if g).upper()
        if letter in allowed:
            found.append(_Mention(frozenset({letter}), match.start(), match.end()))
    return found


def _bare_mentions(text: str, allowed: set[str], words_too: bool) -> list[_Mention]:
    """Standalone capitals; "A good one" and "I think" are words unless words_too."""
    found = []
    for match in _BARE_LETTER.finditer(text):
        letter = match.group(1)
        is_word = letter in "AI" and _WORD_AFTER.match(text, match.end()) is not None
        if letter in allowed and (words_too or not is_word):
            found.append(_Mention(frozenset({letter}), match.start(), match.end()))
    lone = _LONE_LETTER.fullmatch(text)  # a lone lower-case "b" or "b."
    if not found and lone and lone.group(1).upper() in allowed:
        found.append(_Mention(frozenset({lone.group(1).upper()}), 0, len(text)))
    return found


def _negated(text: str, mention: _Mention) -> bool:
    return (_NEGATED_BEFORE.search(text[:mention.start]) is not None
            or _NEGATED_AFTER.match(text[mention.end:]) is not None)


def _pick(text: str, mentions: list[_Mention], last: bool) -> frozenset[str] | None:
    """The first stated (or, at the end of a reply, last) option; None for none or a hedge."""
    kept = sorted((m for m in mentions if not _negated(text, m)), key=lambda m: m.start)
    if not kept:
        return None
    chosen = kept[-1] if last else kept[0]
    index = kept.index(chosen)
    for other in kept[max(index - 1, 0):index + 2]:
        if other.letters == chosen.letters:
            continue
        left, right = sorted((other, chosen), key=lambda m: m.start)
        if _HEDGE_JOIN.fullmatch(text, left.end, right.start):
            return None
    return chosen.letters


def _labels(text: str, letters: list[_Mention], named: list[_Mention]) -> list[_Mention]:
    """Text mentions that are not just the label right after a letter ("(B) 12/25/1937")."""
    return [t for t in named if not any(m.end <= t.start and _LABEL_GAP.fullmatch(text, m.end, t.start)
                                        for m in letters)]


def _chosen_option(statement: Statement, question: str, target_text: tuple[str, ...],
                   gold: frozenset[str]) -> frozenset[str] | None:
    options, texts = _listed_options(question)
    if target_text:
        texts = {**texts, target_text: texts.get(target_text, gold)}  # a text target is an option
    exact = texts.get(_norm_text(statement.text))
    if exact:
        return exact  # the whole statement is an option's text ("A Hard Day's Night")
    text = statement.text if statement.explicit else _last_sentence_or_line(statement.text)
    allowed = set(options) or set(string.ascii_uppercase)
    # At the end of a reply without a statement only short lines may name an option by a bare capital.
    short = statement.explicit or len(text.split()) <= 3
    letters = _letter_mentions(text, allowed)
    named = _text_mentions(text, texts)
    bare = [m for m in _bare_mentions(text, allowed, words_too=False) if short
            and not any(t.start <= m.start < t.end for t in named + letters)]
    pool = letters + _labels(text, letters, named) + bare
    if not pool and short:
        pool = _bare_mentions(text, allowed, words_too=True)  # "Answer: A because it fits"
    return _pick(text, pool, last=not statement.explicit)


def _last_sentence_or_line(line: str) -> str:
    parts = [p for p in _SENTENCE_END.split(line) if p.strip()]
    return parts[-1].strip() if parts else line


def score_multiple_choice(response: str, target: str, question: str | None = None) -> int:
    """1 if the option the reply chooses, by its letter or its text, is the target option.

    ``question`` supplies the ``Options:`` list that maps letters to texts; without it only
    letters (and a text target's own text) can be read.
    """
    question = question if isinstance(question, str) else ""
    gold = _gold_letters(target or "", _listed_options(question)[0])
    target_text = () if _LETTER_TARGET.fullmatch((target or "").strip()) else _norm_text(target or "")
    if not gold:
        if not target_text:
            return 0
        gold = _UNLISTED  # a text target that no option spells: only its own text can match
    chosen = _chosen_option(final_statement(response), question, target_text, gold)
    return int(chosen is not None and chosen <= gold)


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
    clause = _first_sentence(statement.text)
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
    readings = [_words(text) for text in (line, plain, _first_sentence(line), _LEAD_IN.sub("", line, count=1))]
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
