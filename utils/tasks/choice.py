"""Multiple choice: the option a reply chooses, by its letter ("(B)", "Option b") or by its text from the
question's ``Options:`` list, negations ("not (A)") and hedges ("A or B") read as a grader would."""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

from .answers import SENTENCE_END, Statement, final_statement

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
    parts = [p for p in SENTENCE_END.split(line) if p.strip()]
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
