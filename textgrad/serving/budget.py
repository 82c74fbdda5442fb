"""Every request within the context window (prompt tokens + max_tokens <= the engine's window), and no text
ever cut to get there.

A request is a system and a user template whose fields are fixed text or `Droppable` lists of whole items.
The reply may use max(max_tokens, the caller's `min_output`) tokens: an optimizer or merge reply must have
room to give its whole text back, whatever the flag says (`room_to_return`). `fitted_reply` sends the
request as written when it fits. Otherwise, in this order:

1. the reply's budget is lowered (to no less than a quarter of the window, and never below `min_output`),
   counted as `context_shortened` (the reply limit, not any text, is what is shortened);
2. a `Droppable` field (feedback on a batch, earlier versions of a prompt) leaves out its earliest items,
   whole, keeping at least `keep` of them; counted as `context_dropped` (items) with a warning;
3. if it still does not fit, ContextOverflowError reaches the caller, which skips that item or step
   (counted as `context_skipped`): an answer scores 0, a local step is skipped, a merge splits its group.

No part of any text (a prompt, a question, an answer, a feedback item) is shortened: a text is sent whole
or not at all. When the server still answers "too long" (its window was unknown, or its tokenizer counts
more than we do), the request is rebuilt once for the smaller window it revealed, or three quarters of the
old one, and sent again; the engine counts every overflow reply (context_overflows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextOverflowError
from .tokenizers import estimate_tokens
from .transport import ChatReply
from .window import message_overhead

RETRY_SHRINK = 0.75

Count = Callable[[str], int]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Droppable:
    """A template field of whole items joined by `join`; when the request cannot hold them all, the earliest
    are left out (fields of lower `priority` first), never cut, and at least `keep` of them stay."""

    items: tuple[str, ...]
    join: Callable[[list[str]], str] = "\n\n".join
    keep: int = 1
    noun: str = "items"
    priority: int = 1

    @property
    def full(self) -> str:
        return self.join(list(self.items))

    def latest(self, count: int) -> str:
        """The field with only its last `count` items."""
        return self.join(list(self.items[len(self.items) - count:])) if count else self.join([])


Fields = Mapping[str, "str | Droppable"]


def as_written(fields: Fields) -> dict[str, str]:
    """The field values before any fitting: every droppable field whole."""
    return {name: f.full if isinstance(f, Droppable) else f for name, f in fields.items()}


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    max_tokens: int
    lowered: bool    # the reply's max_tokens was lowered to fit
    left_out: Mapping[str, int] = field(default_factory=dict)  # noun -> items of a droppable field left out, whole

    @property
    def dropped(self) -> int:
        return sum(self.left_out.values())


def _render(system: str | None, user: str, values: Mapping[str, str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system.format(**values)}] if system is not None else []
    return messages + [{"role": "user", "content": user.format(**values)}]


def _size(messages: list[dict[str, str]], measure: Count) -> int:
    return sum(measure(m["content"]) for m in messages) + message_overhead(messages)


def fit_request(engine: Any, window: int, *, system: str | None, user: str, fields: Fields, max_tokens: int,
                min_output: int = 0) -> Request:
    """The request within the window: its reply asks for max(max_tokens, min_output) tokens, lowered to fit but
    never below min_output; then droppable fields leave out their earliest items. ContextOverflowError when
    even that does not fit."""
    max_tokens = max(max_tokens, min_output)
    estimate: Count = getattr(engine, "estimate_tokens", estimate_tokens)
    count: Count = getattr(engine, "count_tokens", estimate_tokens)
    values = as_written(fields)
    natural = _render(system, user, values)
    if _size(natural, estimate) + max_tokens <= window:
        return Request(natural, max_tokens, lowered=False)
    natural_tokens = _size(natural, count)
    if natural_tokens + max_tokens <= window:
        return Request(natural, max_tokens, lowered=False)
    output = min(max_tokens, max(window - natural_tokens, window // 4, min_output))
    room = window - output
    if natural_tokens <= room:
        return Request(natural, output, lowered=output < max_tokens)

    droppables = sorted(((name, f) for name, f in fields.items() if isinstance(f, Droppable)),
                        key=lambda pair: pair[1].priority)
    kept = {name: len(f.items) for name, f in droppables}
    sizes = {name: [count(item) for item in f.items] for name, f in droppables}
    excess = natural_tokens - room
    for name, droppable in droppables:
        while excess > 0 and kept[name] > droppable.keep:
            excess -= sizes[name][len(droppable.items) - kept[name]]
            kept[name] -= 1
    for _ in range(len(natural) + 3):  # tokens merge across item borders: re-measure, drop one more if needed
        left_out = {f.noun: len(f.items) - kept[name] for name, f in droppables if kept[name] < len(f.items)}
        values = {**values, **{name: f.latest(kept[name]) for name, f in droppables}}
        messages = _render(system, user, values)
        if left_out and _size(messages, count) <= room:
            return Request(messages, output, lowered=output < max_tokens, left_out=left_out)
        more = next((name for name, f in droppables if kept[name] > f.keep), None)
        if more is None:
            break
        kept[more] -= 1
    raise ContextOverflowError(f"a request of {natural_tokens} prompt tokens does not fit the {window}-token window "
                               f"beside a {output}-token reply (no text is cut to fit)", window=window,
                               prompt_tokens=natural_tokens)


def room_for(tokens: int) -> int:
    """Reply tokens that give back a text of `tokens` tokens whole (an edited prompt, a merge): its length plus
    a quarter for the edits, plus a little for the tags or the JSON around it."""
    return tokens * 5 // 4 + 32


def room_to_return(engine: Any, texts: Sequence[str]) -> int:
    """room_for the longest of texts."""
    estimate: Count = getattr(engine, "estimate_tokens", estimate_tokens)
    return room_for(max(estimate(t) for t in texts))


def fitted_chat(engine: Any, *, system: str | None, user: str, fields: Fields | None = None, max_tokens: int,
                min_output: int = 0) -> str:
    """The reply text of fitted_reply."""
    return fitted_reply(engine, system=system, user=user, fields=fields, max_tokens=max_tokens,
                        min_output=min_output).text


def _send(engine: Any, messages: list[dict[str, str]], max_tokens: int,
          response_format: dict[str, Any] | None) -> ChatReply:
    if hasattr(engine, "chat_reply"):
        return engine.chat_reply(messages, max_tokens=max_tokens, response_format=response_format)
    return ChatReply(engine.chat(messages, max_tokens=max_tokens))  # a plain engine: text only, tags only


def _count_fitting(engine: Any, request: Request, window: int) -> None:
    if request.lowered:
        engine.stats.add(context_shortened=1)
    if request.dropped:
        engine.stats.add(context_dropped=request.dropped)
        what = " and ".join(f"{n} of its {noun}" for noun, n in request.left_out.items())
        logger.warning("%s: a request left out %s, whole, to fit the %d-token context window (counted as "
                       "context_dropped)", getattr(engine, "name", "engine"), what, window)


def fitted_reply(engine: Any, *, system: str | None, user: str, fields: Fields | None = None, max_tokens: int,
                 min_output: int = 0, response_format: dict[str, Any] | None = None) -> ChatReply:
    """Send the request within the engine's window (see the module's docstring); built once more for a smaller
    window after an overflow reply.

    Raises ContextOverflowError (counted as context_skipped) when no version of it fits.
    Engines that do not know their window (test doubles) get the request as written.
    """
    fields = fields or {}
    window = getattr(engine, "context_window", None)
    if window is None:
        return _send(engine, _render(system, user, as_written(fields)), max(max_tokens, min_output),
                     response_format)
    sent: tuple[list[dict[str, str]], int] | None = None
    failure: ContextOverflowError | None = None
    for _ in range(2):
        try:
            request = fit_request(engine, window, system=system, user=user, fields=fields, max_tokens=max_tokens,
                                  min_output=min_output)
        except ContextOverflowError as exc:
            failure = exc
            break
        if sent == (request.messages, request.max_tokens):
            break  # nothing left to change: never send a rejected request again unchanged
        _count_fitting(engine, request, window)
        try:
            return _send(engine, request.messages, request.max_tokens, response_format)
        except ContextOverflowError as exc:
            failure, sent = exc, (request.messages, request.max_tokens)
            window = min(engine.context_window, int(window * RETRY_SHRINK))
    engine.stats.add(context_skipped=1)
    assert failure is not None
    raise failure


def generate(engine: Any, prompt: str, system_prompt: str | None = None, *, max_tokens: int) -> str:
    """engine.generate within the window. The system prompt and the question are sent whole: when they cannot
    fit beside a reply of at least a quarter of the window, ContextOverflowError (the caller skips the call)."""
    fields = {"prompt": prompt} if system_prompt is None else {"prompt": prompt, "system": system_prompt}
    return fitted_chat(engine, system="{system}" if system_prompt is not None else None, user="{prompt}",
                       fields=fields, max_tokens=max_tokens)


def context_results(llm: Mapping[str, int], windows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What results.json reports about context windows, from the run's summed engine counters and the
    engines' windows (Runtime.context_windows)."""
    return {"context_overflows": llm.get("context_overflows", 0),
            "context": {"windows": windows,
                        "overflow_replies": llm.get("context_overflows", 0),
                        "shortened_requests": llm.get("context_shortened", 0),
                        "dropped_items": llm.get("context_dropped", 0),
                        "skipped_calls": llm.get("context_skipped", 0)}}
