"""Deterministic replies in the formats the pipeline expects, for the bench server.

Every reply is a pure function of the request, so a concurrent and a sequential run see the
same answers. The kind of request is recognised from the system prompt our code sends.
Answers are right for about 40% of (prompt, question) pairs where the question can be solved
here (synthetic and BBH-style counting, arithmetic, word sorting), so accuracies vary with the
prompt instead of being stuck at 0 or 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Any

from textgrad.prompts import FEEDBACK_SYSTEM, OPTIMIZER_SYSTEM
from utils.federated.aggregation import MERGE_SYSTEM
from utils.tasks.evaluation import JUDGE_SYSTEM
from utils.tasks.synthetic import _CATEGORIES  # our own word lists: lets the server count their items

RIGHT_PERCENT = 40
ECHO_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

_KIND_BY_SYSTEM = {FEEDBACK_SYSTEM: "feedback", OPTIMIZER_SYSTEM: "optimizer", MERGE_SYSTEM: "merge",
                   JUDGE_SYSTEM: "judge"}

_CRITIQUES = (
    "The prompt does not ask the model to list the relevant items before combining them.",
    "The prompt should tell the model to re-read the question for quantities written as words.",
    "The prompt lets the model skip intermediate results; it should require each one to be written down.",
    "The prompt should warn that distractors in the question must be ignored.",
    "The prompt should ask the model to verify the final result against the question once more.",
    "The prompt is vague about the order of operations; it should spell it out.",
)

_STRATEGIES = (
    "List every relevant item with its quantity before adding anything up.",
    "Write each intermediate result on its own line.",
    "Ignore items that do not belong to the category being asked about.",
    "Treat number words such as 'three' as quantities.",
    "Apply multiplication before addition and subtraction inside each bracket.",
    "Compare words letter by letter when putting them in order.",
    "Check the final result against the question before writing it.",
    "Keep the reasoning short and concrete.",
)

_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_COUNT_QUESTION = re.compile(r"I have (.+?)\.\s*How many ([a-z ]+?) do I have\?", re.IGNORECASE | re.DOTALL)
_ARITHMETIC = re.compile(r"[\d\s()+\-*]+=?\s*")
_SORT_QUESTION = re.compile(r"Sort the following words alphabetically:\s*List:\s*(.+)", re.IGNORECASE | re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def request_kind(messages: list[dict]) -> str:
    """answer | feedback | optimizer | merge | judge, from the system message our code sends."""
    system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
    return _KIND_BY_SYSTEM.get(system, "answer")


# ---------------------------------------------------------------- answers


def _count_items(question: str) -> int | None:
    match = _COUNT_QUESTION.search(question)
    if match is None:
        return None
    listing, asked = match.group(1), match.group(2).strip().lower()
    members = {name for pair in _CATEGORIES.get(asked, []) for name in pair}
    total = 0
    for item in re.split(r",\s*(?:and\s+)?|\s+and\s+", listing):
        words = item.strip().lower().split(" ", 1)
        if len(words) < 2:
            continue
        count = 1 if words[0] in ("a", "an") else _NUMBER_WORDS.get(words[0])
        if count is None:
            return None
        # Unknown categories (e.g. BBH "objects") count every item.
        if not members or words[1] in members:
            total += count
    return total


def _arithmetic(question: str) -> int | None:
    text = question.strip()
    if len(text) > 300 or "**" in text or not _ARITHMETIC.fullmatch(text):
        return None
    try:
        # Safe: the pattern admits only digits, brackets, + - * and spaces.
        value = eval(text.rstrip("= \n"), {"__builtins__": {}}, {})  # noqa: S307
    except (SyntaxError, ZeroDivisionError, TypeError):
        return None
    return int(value) if isinstance(value, int) else None


def solve(question: str) -> str | None:
    """The true answer of a counting, arithmetic or word-sorting question, or None."""
    sort = _SORT_QUESTION.search(question)
    if sort:
        return " ".join(sorted(sort.group(1).split()))
    for solver in (_count_items, _arithmetic):
        value = solver(question)
        if value is not None:
            return str(value)
    return None


def _wrong_answer(question: str, truth: str | None, h: int) -> str:
    if truth is not None and re.fullmatch(r"-?\d+", truth):
        return str(int(truth) + 1 + h % 3)
    if truth is not None:  # sorted words: give them back in the order asked
        return _SORT_QUESTION.search(question).group(1).strip()  # type: ignore[union-attr]
    if "Options:" in question:
        return f"({'ABCD'[h % 4]})"
    return str(h % 20)


def answer_reply(system: str, question: str) -> str:
    forced = injected_answer(system)
    if forced is not None:
        return forced
    h = stable_hash(system, question)
    truth = solve(question)
    right = truth is not None and h % 100 < RIGHT_PERCENT
    answer = truth if right else _wrong_answer(question, truth, h // 100)
    return f"I read the question closely and worked through it step by step.\nAnswer: {answer}"


# ---------------------------------------------------------------- evaluation-engine replies


def feedback_reply(request: str) -> str:
    h = stable_hash(request)
    first = _CRITIQUES[h % len(_CRITIQUES)]
    second = _CRITIQUES[(h // 7) % len(_CRITIQUES)]
    return first if first == second else f"{first} {second}"


def edited_prompt(current: str, feedback: str, distinct: bool = False) -> str:
    """The current prompt with one strategy sentence inserted before its last sentence. distinct: the sentence
    carries a rule number from the request's hash, so that (as with a real model) clients write different
    prompts rather than one of a few."""
    h = stable_hash(current, feedback)
    unused = [s for s in _STRATEGIES if s not in current] or [f"Double-check step {h % 9 + 1} of the reasoning."]
    extra = unused[h % len(unused)]
    if distinct:
        extra = f"Rule {10000 + h % 90000}: {extra[0].lower()}{extra[1:]}"
    lines = current.splitlines() or [""]
    head = _SENTENCE_END.split(lines[-1])
    if len(head) > 1:  # keep the final sentence last, on its own line
        last_line = [" ".join(head[:-1]), extra, head[-1]]
    else:
        last_line = [extra, lines[-1]]
    return "\n".join(lines[:-1] + last_line)


_CURRENT = re.compile(r"\nCurrent [^\n]*:\n(.*)\n\n", re.DOTALL)  # up to the last paragraph, the reply format
_FEEDBACK = re.compile(r"^Feedback on [^\n]*:\n(.*?)\n(?:\nRules |Current )", re.DOTALL)


def _found(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match.group(1).strip() if match else ""


def optimizer_text(request: str, quote_rate: float = 0.0, distinct: bool = False) -> str:
    edited = edited_prompt(_found(_CURRENT, request), _found(_FEEDBACK, request), distinct)
    return quoting_edit(edited, request, quote_rate) if quote_rate > 0 else edited


def merged_prompt(prompts: list[str]) -> str:
    """Every distinct sentence once, in order of appearance; each prompt's last sentence goes last."""
    finals: list[str] = []
    body: list[str] = []
    for prompt in prompts:
        sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(prompt.split())) if s.strip()]
        if sentences:
            finals.append(sentences[-1])
            body.extend(sentences[:-1])
    finals = list(dict.fromkeys(finals))
    body = [s for s in dict.fromkeys(body) if s not in finals]
    return "\n".join(body + finals)


MERGE_BUDGETS = ("obey", "ignore", "second_try")
_LIMIT = re.compile(r"must not exceed (\d+) tokens")
_OVER = "came out at"


def within_tokens(text: str, limit: int) -> str:
    """The text's lines left out from its second-to-last up until it has at most limit tokens (the first and
    the last line stay): how this server keeps a merge within the budget its request states."""
    lines = text.split("\n")
    while len(lines) > 2 and estimate_tokens("\n".join(lines)) > limit:
        del lines[-2]
    return "\n".join(lines)


def merge_text(request: str, budget: str = "obey") -> str:
    """merged_prompt of the request's prompts; within the request's stated budget, unless `budget` is "ignore"
    (never), or "second_try" (only once told that an earlier merge came out too long)."""
    merged = merged_prompt(re.findall(r"<PROMPT>\n?(.*?)\n?</PROMPT>", request, re.DOTALL))
    limit = _LIMIT.search(request)
    if limit is None or budget == "ignore" or (budget == "second_try" and _OVER not in request):
        return merged
    return within_tokens(merged, int(limit.group(1)))


def judge_reply(request: str) -> str:
    reference = re.search(r"Reference answer:\s*(.*)", request)
    response = request.split("Response to check", 1)[-1]
    if reference and reference.group(1).strip() and reference.group(1).strip().lower() in response.lower():
        return "Yes"
    return "Yes" if stable_hash(request) % 5 == 0 else "No"


# The tags around the text of each kind of reply in the tag format (the judge answers with a bare word).
_TAGS = {"optimizer": "IMPROVED_VARIABLE", "merge": "MERGED_PROMPT"}


def reply_for(messages: list[dict], json_field: str | None = None, quote_rate: float = 0.0,
              distinct_edits: bool = False, merge_budget: str = "obey") -> tuple[str, str]:
    """(kind, reply text) for a well-behaved server: with json_field (a structured request), a JSON object
    holding the text under that field; else optimizer and merge texts between their tags. With
    quote_rate > 0 feedback quotes the question it saw and that share of optimizer replies copies a
    quoted question into the prompt; distinct_edits and merge_budget: see edited_prompt and merge_text."""
    kind = request_kind(messages)
    system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
    user = "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
    texts = {"feedback": quoting_feedback if quote_rate > 0 else feedback_reply,
             "optimizer": lambda request: optimizer_text(request, quote_rate, distinct_edits),
             "merge": lambda request: merge_text(request, merge_budget),
             "judge": judge_reply}
    text = texts[kind](user) if kind in texts else answer_reply(system, user)
    if json_field is not None:
        return kind, json.dumps({json_field: text})
    return kind, f"<{_TAGS[kind]}>\n{text}\n</{_TAGS[kind]}>" if kind in _TAGS else text


def malformed_reply(kind: str, good_reply: str, variant: int, structured: bool = False) -> str:
    """A reply a sloppy model might give: empty, chatter, or (optimizer/merge) the text without its tags,
    or (a structured request) its JSON cut in the middle."""
    if variant % 3 == 0:
        return ""
    if variant % 3 == 2 and structured:
        return good_reply[:len(good_reply) // 2]
    if variant % 3 == 1 or kind not in ("optimizer", "merge"):
        return "Sure! Here is what I think about it, in general terms."
    return re.sub(r"</?(IMPROVED_VARIABLE|MERGED_PROMPT)>", "", good_reply).strip()


# ---------------------------------------------------------------- leaks and injected instructions

_INJECTED = re.compile(r"always reply with exactly:\s*(Answer:[^\n]*)", re.IGNORECASE)
_QUOTED = re.compile(r'It went wrong on this input: "(.+?)"', re.DOTALL)


def injected_answer(system: str) -> str | None:
    """An obedient model's reply when its system prompt carries an instruction to always give one answer."""
    match = _INJECTED.search(system)
    return match.group(1).strip() if match else None


def _block(text: str, tag: str) -> str:
    match = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, re.DOTALL)
    return match.group(1).strip() if match else ""


def quoting_feedback(request: str) -> str:
    """Feedback that quotes the question it was shown, as careless reviewers do."""
    question = " ".join(_block(request, "INPUT").split())
    return f'{feedback_reply(request)} It went wrong on this input: "{question}"'


def quoting_edit(edited: str, request: str, quote_rate: float) -> str:
    """For a seeded share of optimizer requests, the edited prompt also quotes, before its last line, a
    question that the feedback quoted: the leak a small optimizer makes."""
    quoted = _QUOTED.findall(_found(_FEEDBACK, request))
    if not quoted or stable_hash("quote", request) % 100 >= round(quote_rate * 100):
        return edited
    lines = edited.splitlines()
    return "\n".join(lines[:-1] + [f"For example: {quoted[0]}", lines[-1]])


# ---------------------------------------------------------------- prompt log-probabilities


def prompt_token_logprobs(text: str) -> tuple[list[str], list[float | None]]:
    """~4-character tokens and a log-probability for each: a chunk seen before in the text is
    predictable (near 0), a new one costs 1-8 nats by its hash, so repetitive and lumpy texts differ."""
    tokens = [text[i:i + 4] for i in range(0, len(text), 4)]
    seen: set[str] = set()
    logprobs: list[float | None] = []
    for index, token in enumerate(tokens):
        h = stable_hash(token)
        if index == 0:
            logprobs.append(None)  # as OpenAI-style servers do: nothing predicts the first token
        elif token in seen:
            logprobs.append(-0.05 - (h % 20) / 100)
        else:
            logprobs.append(-1.0 - (h % 700) / 100)
        seen.add(token)
    return tokens, logprobs


def echo_reply(request: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The `echo` replies: "reply from <model> to: <last message>"."""
    last = messages[-1]["content"] if messages else ""
    content = None if last == "__null__" else f"reply from {request.get('model')} to: {last}"
    payload: dict[str, Any] = {
        "id": "chatcmpl-echo", "object": "chat.completion", "created": 0, "model": request.get("model"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
    }
    if last != "__nousage__":
        payload["usage"] = dict(ECHO_USAGE)
    return payload


def completion_reply(prompt: str, max_tokens: int, echo: bool, logprobs: bool, model: str) -> dict[str, Any]:
    """A legacy completion of prompt: one generated token, the prompt echoed with its per-token
    log-probabilities when asked (how the UID measures read a prompt's surprisal)."""
    tokens: list[str] = []
    values: list[float | None] = []
    if echo:
        tokens, values = prompt_token_logprobs(prompt)
    generated = "\n" if max_tokens > 0 else ""
    if generated:
        tokens.append(generated)
        values.append(-0.5)
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    text = (prompt if echo else "") + generated
    return {
        "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "length",
                     "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets,
                                  "top_logprobs": None} if logprobs else None}],
        "usage": {"prompt_tokens": estimate_tokens(prompt), "completion_tokens": len(generated),
                  "total_tokens": estimate_tokens(prompt) + len(generated)},
    }
