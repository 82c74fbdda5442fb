"""Replies that carry one text (an edited prompt, a merge, a verdict): a one-field JSON object through the
backend's structured output where it has one, tags elsewhere.

Structured output makes the server constrain decoding to a JSON schema, so even a 135M model returns a
parseable object; tags depend on the model following an instruction, which small models rarely do. Each
backend spells the request field its own way (keyed by the engine's route kind):

- llama-cpp-python (the embedded `local` engine, `LOCAL_BASE_URL`): {"type": "json_object", "schema": ...}
- vLLM, SGLang, OpenAI and Ollama's OpenAI-compatible API: {"type": "json_schema", "json_schema": ...}

Schemas stay minimal (one string property, no length limits): llama-cpp-python's grammar builder aborts,
killing the server process, on a `maxLength` in the hundreds. How each backend spells the field is
textgrad.serving.backends.Backend.response_format; the --structured_output mode, and the engines whose
server rejected the field and use tags since, are the engine's runtime's (serving.reply_formats).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StructuredOutputRejected
from .serving import budget
from .serving.transport import ChatReply

# Why a reply holds no usable text. "truncated": cut at max_tokens (finish_reason "length"), whatever else
# is wrong with it. A verdict that is none of the allowed words is "not_a_choice". A request that could
# not fit the window is "context_overflow" (no reply at all).
REPLY_FAILURES = ("no_tags", "unparseable_json", "empty", "truncated")
NOT_A_CHOICE = "not_a_choice"
CONTEXT_OVERFLOW = "context_overflow"


# Openers small models put before the text itself ("The edited text is:"); never part of a prompt.
_PREAMBLE = re.compile(r"^\s*(?:here(?: is|'s)\s+)?(?:the\s+)?(?:edited|improved|new|merged|revised|updated|combined|"
                       r"corrected|rewritten)\s+(?:system\s+)?(?:text|prompt|instructions?|version)"
                       r"(?:\s+(?:is|are))?(?:\s+now)?\s*:\s*", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class ReplySpec:
    """What one request wants back, in both formats."""

    field: str             # the JSON property that holds the text
    tag: str | None        # the tags around it in the fallback format; None: the whole reply is the text
    what: str              # the text, as the request names it ("the edited text")
    choices: tuple[str, ...] = ()  # the only values allowed (a verdict), else any text

    def schema(self) -> dict[str, Any]:
        prop: dict[str, Any] = {"type": "string"}
        if self.choices:
            prop["enum"] = list(self.choices)
        return {"type": "object", "properties": {self.field: prop}, "required": [self.field],
                "additionalProperties": False}

    def instruction(self, structured: bool) -> str:
        """The request's last sentence: how to reply. No example to copy and nothing inviting a preamble."""
        if structured and self.choices:
            return f'Reply with a JSON object whose one field "{self.field}" is {" or ".join(self.choices)}.'
        if structured:
            return (f'Reply with a JSON object whose one field "{self.field}" holds {self.what}, '
                    f"from the first word to the last.")
        if self.tag is None:
            return f"Reply with one word: {' or '.join(self.choices)}." if self.choices else f"Reply with {self.what}."
        return f"Reply with {self.what} between <{self.tag}> and </{self.tag}>, and nothing else."


@dataclass(frozen=True)
class TextAnswer:
    """value: the usable text, or None with failure saying why. text: the reply as received."""

    value: str | None
    failure: str | None
    text: str
    structured: bool


# ---------------------------------------------------------------- what an engine is asked for


def request_format(engine: Any, spec: ReplySpec) -> dict[str, Any] | None:
    """What this engine is sent now; None means tags (an engine of ours whose backend has no structured
    output, a runtime in mode off, an earlier rejection; any other engine)."""
    formats = getattr(engine, "reply_formats", None)
    if formats is None or not hasattr(engine, "chat_reply") or not formats.structured_for(engine.name):
        return None
    return engine.backend.response_format(spec.field, spec.schema())


# ---------------------------------------------------------------- parsing


def _strip_preamble(text: str) -> str:
    rest = _PREAMBLE.sub("", text, count=1).strip()
    return rest or text.strip()


def json_field(text: str, field: str) -> str | None:
    """The string under `field` of the JSON object in text (code fences and chatter around it allowed)."""
    raw = text.strip()
    fenced = _FENCE.match(raw)
    candidates = [fenced.group(1) if fenced else raw]
    start, end = raw.find("{"), raw.rfind("}")
    if 0 <= start < end:
        candidates.append(raw[start:end + 1])
    for candidate in candidates:
        try:
            # strict=False: grammar-constrained servers (llama-cpp-python) let raw newlines into strings.
            value = json.loads(candidate, strict=False)
        except ValueError:
            continue
        if isinstance(value, Mapping) and isinstance(value.get(field), str):
            return value[field]
    return None


def tagged(text: str, tag: str) -> str | None:
    """The text between <tag> and </tag> (any case), or None when either tag is missing."""
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL | re.IGNORECASE)
    return None if match is None else match.group(1)


def _choice(text: str, choices: tuple[str, ...]) -> str | None:
    words = [w.casefold() for w in choices]
    found = re.search(r"\b(" + "|".join(map(re.escape, words)) + r")\b", text, re.IGNORECASE)
    return None if found is None else choices[words.index(found.group(1).casefold())]


def _raw_value(text: str, spec: ReplySpec, structured: bool) -> tuple[str | None, str]:
    """(the reply's text field before cleaning, or None; the failure kind when it is missing)."""
    if structured:
        return json_field(text, spec.field), "unparseable_json"
    if spec.tag is not None:
        return tagged(text, spec.tag), "no_tags"
    return text, NOT_A_CHOICE


def _clean(raw: str | None, spec: ReplySpec) -> str | None:
    value = (raw or "").strip()
    if not value:
        return None
    return _choice(value, spec.choices) if spec.choices else _strip_preamble(value)


def extract(reply: ChatReply, spec: ReplySpec, structured: bool) -> TextAnswer:
    """The usable text of a reply, or the kind of failure. A reply cut at the token limit is `truncated`,
    unless its text came back whole anyway (the tags closed before the model rambled on)."""
    text = reply.text or ""
    raw, missing = _raw_value(text, spec, structured)
    value = _clean(raw, spec)
    if value:
        return TextAnswer(value, None, text, structured)
    if reply.finish_reason == "length":
        failure = "truncated"
    elif not text.strip() or (raw is not None and not raw.strip()):
        failure = "empty"
    elif spec.choices and raw is not None:
        failure = NOT_A_CHOICE
    else:
        failure = missing
    return TextAnswer(None, failure, text, structured)


# ---------------------------------------------------------------- asking


def ask_text(engine: Any, spec: ReplySpec, *, system: str, user: str, fields: budget.Fields,
             max_tokens: int, min_output: int = 0) -> TextAnswer:
    """One request whose reply is one text, in the engine's reply format; the template's `{reply_format}`
    field receives the matching instruction. Raises ContextOverflowError when it cannot fit the window."""
    while True:
        shape = request_format(engine, spec)
        values = {**fields, "reply_format": spec.instruction(shape is not None)}
        try:
            reply = budget.fitted_reply(engine, system=system, user=user, fields=values, max_tokens=max_tokens,
                                        min_output=min_output, response_format=shape)
        except StructuredOutputRejected as exc:
            engine.reply_formats.fall_back(engine.name, exc)  # the next turn asks for tags
            continue
        return extract(reply, spec, structured=shape is not None)
