"""The final answer statement of a model reply: the part a grader reads, and the only part the scorers read.

It is the last ``Answer:`` line, else the last "the answer is ..." phrase, else the end of the reply, so
values mentioned along the way never count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
SENTENCE_END = re.compile(r"(?<=\S)[.!?;](?=\s|$)")


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


def first_sentence(text: str) -> str:
    end = SENTENCE_END.search(text)
    return text[:end.start()] if end else text


def without_answer_statements(text: str) -> str:
    """The text with every answer statement removed: each ``Answer:`` mark or "the answer is" phrase up
    to the end of its sentence or line. What is left of a prompt is its instructions."""
    pattern = re.compile(f"(?:{_ANSWER_MARK.pattern}|{_ANSWER_PHRASE.pattern})[^\n]*?(?:{SENTENCE_END.pattern}|$)",
                         re.IGNORECASE | re.MULTILINE)
    return pattern.sub(" ", text if isinstance(text, str) else "")
