"""Every request within the context window: prompt tokens + max_tokens <= the engine's window.

A request is a system and a user template whose fields are either fixed text or `Cuttable` text.
The reply may use max(max_tokens, the caller's `min_output`) tokens: an optimizer or merge reply must have
room to give its whole text back, whatever the flag says (`room_to_return`). `fitted_chat` sends the
request as written when it fits. Otherwise the reply's budget is lowered (to no less than a quarter of
the window, and never below `min_output`) and the cuttable fields share
what is left of the window by weight: each field that needs less than its share keeps all of it,
the rest are shortened in the middle, where a visible marker says how much was cut. A list of items
(feedback on a batch, client prompts) is shared out item by item the same way; a list that may lose
items (`drop_oldest`) drops its earliest ones when the rest cannot each keep MIN_PART_TOKENS.

When the server still answers "too long" (its window was unknown, or its tokenizer counts more than
we do), the request is rebuilt once for the smaller window it revealed, or three quarters of the old
one, and sent again. If that fails too, or if no version fits at all, ContextOverflowError reaches the
caller, which skips that item or step; the engine counts every case (context_overflows,
context_shortened, context_skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextOverflowError
from .tokenizers import estimate_tokens
from .transport import ChatReply
from .window import message_overhead

CUT_MARKER = "[... {n} tokens cut ...]"
# A shortened text keeps at least this many tokens; below that a cut text says nothing useful.
MIN_PART_TOKENS = 24
RETRY_SHRINK = 0.75

Count = Callable[[str], int]


# ---------------------------------------------------------------- shortening


def shorten_middle(text: str, limit: int, count: Count) -> str:
    """text within `limit` tokens, its beginning and end kept and the middle replaced by a marker."""
    total = count(text)
    if total <= limit:
        return text
    marker_cost = count(CUT_MARKER.format(n=total)) + 2
    keep_chars = int(len(text) * max(limit - marker_cost, 0) / total)
    while True:
        head_end = _word_boundary(text, keep_chars // 2, backwards=True)
        tail_start = _word_boundary(text, len(text) - (keep_chars - keep_chars // 2), backwards=False)
        head, tail = text[:head_end].rstrip(), text[max(tail_start, head_end):].lstrip()
        cut = count(text[len(head):len(text) - len(tail)])
        shortened = "\n".join(part for part in (head, CUT_MARKER.format(n=cut), tail) if part)
        if count(shortened) <= limit or keep_chars == 0:
            return shortened
        keep_chars = int(keep_chars * 0.85)


def _word_boundary(text: str, index: int, backwards: bool) -> int:
    """index moved to the nearest whitespace within 20 characters, so words are not split."""
    index = max(0, min(len(text), index))
    span = range(index, max(index - 20, 0), -1) if backwards else range(index, min(index + 20, len(text)))
    return next((i for i in span if text[i - 1:i].isspace() or text[i:i + 1].isspace()), index)


def allocate(sizes: Sequence[int], weights: Sequence[float], budget: int, floor: int = 0) -> list[int]:
    """Shares of budget: first each part up to `floor` tokens, then the rest in proportion to weight,
    where a part needing less than its share keeps its size and the remainder is shared again among
    the others (water-filling)."""
    shares = [min(size, floor) for size in sizes]
    remaining = budget - sum(shares)
    if remaining < 0:  # not even the floors fit: proportional shares, which the caller will refuse
        total = sum(sizes) or 1
        return [max(budget, 0) * size // total for size in sizes]
    active = [i for i, size in enumerate(sizes) if size > shares[i]]
    while active:
        total_weight = sum(weights[i] for i in active) or 1.0
        satisfied = [i for i in active if sizes[i] - shares[i] <= remaining * weights[i] / total_weight]
        if not satisfied:
            for i in active:
                shares[i] += int(remaining * weights[i] / total_weight)
            break
        for i in satisfied:
            remaining -= sizes[i] - shares[i]
            shares[i] = sizes[i]
        active = [i for i in active if i not in satisfied]
    return shares


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Cuttable:
    """A template field the budget may shorten: one text, or a list of items joined by `join`."""

    items: tuple[str, ...]
    weight: float = 1.0
    join: Callable[[list[str]], str] = "\n\n".join
    drop_oldest: bool = False  # a list that may lose its earliest items when it cannot keep them all
    noun: str = "items"

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Cuttable:
        return cls(items=(text,), weight=weight)

    @property
    def full(self) -> str:
        return self.join(list(self.items))

    def fit(self, limit: int, count: Count) -> str:
        """The field within limit tokens; ContextOverflowError when even the shortest version is longer."""
        if count(self.full) <= limit:
            return self.full
        items = list(self.items)
        dropped = 0
        while items:
            note = [f"[... {dropped} earlier {self.noun} dropped ...]"] if dropped else []
            wrapper = count(self.join(note + [""] * len(items)))
            sizes = [count(item) for item in items]
            shares = allocate(sizes, [1.0] * len(items), limit - wrapper, MIN_PART_TOKENS)
            if all(share >= min(size, MIN_PART_TOKENS) for share, size in zip(shares, sizes, strict=True)):
                return self.join(note + [shorten_middle(item, share, count)
                                         for item, share in zip(items, shares, strict=True)])
            if not self.drop_oldest or len(items) == 1:
                break
            items, dropped = items[1:], dropped + 1
        raise ContextOverflowError(f"{len(self.items)} {self.noun} do not fit in {limit} tokens")


Fields = Mapping[str, "str | Cuttable"]


def as_written(fields: Fields) -> dict[str, str]:
    """The field values before any fitting: every cuttable field whole."""
    return {name: f.full if isinstance(f, Cuttable) else f for name, f in fields.items()}


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    max_tokens: int
    shortened: bool


def _render(system: str | None, user: str, values: Mapping[str, str]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system.format(**values)}] if system is not None else []
    return messages + [{"role": "user", "content": user.format(**values)}]


def fit_request(engine: Any, window: int, *, system: str | None, user: str, fields: Fields, max_tokens: int,
                min_output: int = 0) -> Request:
    """The request with its cuttable fields shortened so prompt + reply <= window; the reply asks for
    max(max_tokens, min_output) tokens, lowered to fit but never below min_output."""
    max_tokens = max(max_tokens, min_output)
    estimate: Count = getattr(engine, "estimate_tokens", estimate_tokens)
    count: Count = getattr(engine, "count_tokens", estimate_tokens)
    cuttables = {name: f for name, f in fields.items() if isinstance(f, Cuttable)}
    natural_values = as_written(fields)
    natural = _render(system, user, natural_values)

    def size(messages: list[dict[str, str]], measure: Count) -> int:
        return sum(measure(m["content"]) for m in messages) + message_overhead(messages)

    if size(natural, estimate) + max_tokens <= window:
        return Request(natural, max_tokens, shortened=False)
    natural_tokens = size(natural, count)
    if natural_tokens + max_tokens <= window:
        return Request(natural, max_tokens, shortened=False)
    output = min(max_tokens, max(window - natural_tokens, window // 4, min_output))
    budget = window - output
    if natural_tokens <= budget:
        return Request(natural, output, shortened=True)

    fixed_tokens = size(_render(system, user, {**natural_values, **dict.fromkeys(cuttables, "")}), count)
    names = list(cuttables)
    sizes = [count(cuttables[n].full) for n in names]
    room = budget - fixed_tokens
    for _ in range(3):  # tokens merge across field borders: re-measure, tighten and try again
        if room <= 0:
            break
        shares = allocate(sizes, [cuttables[n].weight for n in names], room, MIN_PART_TOKENS)
        values = {**natural_values, **{n: cuttables[n].fit(share, count) for n, share in zip(names, shares,
                                                                                               strict=True)}}
        messages = _render(system, user, values)
        excess = size(messages, count) - budget
        if excess <= 0:
            return Request(messages, output, shortened=True)
        room -= excess + 8
    raise ContextOverflowError(f"the fixed parts of this request take {fixed_tokens} of the {budget} prompt "
                               f"tokens a {window}-token window leaves beside a {output}-token reply",
                               window=window, prompt_tokens=fixed_tokens)


def room_to_return(engine: Any, texts: Sequence[str]) -> int:
    """Reply tokens needed to give the longest of texts back whole (an edited prompt, a merge): its
    length plus a quarter for the edits, plus a little for the tags around it."""
    estimate: Count = getattr(engine, "estimate_tokens", estimate_tokens)
    return max(estimate(t) for t in texts) * 5 // 4 + 32


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


def fitted_reply(engine: Any, *, system: str | None, user: str, fields: Fields | None = None, max_tokens: int,
                 min_output: int = 0, response_format: dict[str, Any] | None = None) -> ChatReply:
    """Send the request within the engine's window; shortened once more after an overflow reply.

    Raises ContextOverflowError (counted as context_skipped) when no version of it fits.
    Engines that do not know their window (test doubles) get the request as written.
    """
    fields = fields or {}
    window = getattr(engine, "context_window", None)
    if window is None:
        return _send(engine, _render(system, user, as_written(fields)), max(max_tokens, min_output),
                     response_format)
    stats = engine.stats
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
            break  # nothing left to shorten: never send a rejected request again unchanged
        if request.shortened:
            stats.add(context_shortened=1)
        try:
            return _send(engine, request.messages, request.max_tokens, response_format)
        except ContextOverflowError as exc:
            failure, sent = exc, (request.messages, request.max_tokens)
            window = min(engine.context_window, int(window * RETRY_SHRINK))
    stats.add(context_skipped=1)
    assert failure is not None
    raise failure


def generate(engine: Any, prompt: str, system_prompt: str | None = None, *, max_tokens: int) -> str:
    """engine.generate within the window: the system prompt and the user prompt may be cut in the middle.

    For answers: the question usually needs far less than its share and stays whole; a system prompt
    grown over rounds is what gets cut, keeping its first lines and its last (the answer format).
    """
    fields: dict[str, str | Cuttable] = {"prompt": Cuttable.text(prompt)}
    if system_prompt is not None:
        fields["system"] = Cuttable.text(system_prompt)
    return fitted_chat(engine, system="{system}" if system_prompt is not None else None, user="{prompt}",
                       fields=fields, max_tokens=max_tokens)


def context_results(llm: Mapping[str, int], windows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What results.json reports about context windows, from the run's summed engine counters and the
    engines' windows (Runtime.context_windows)."""
    return {"context_overflows": llm.get("context_overflows", 0),
            "context": {"windows": windows,
                        "overflow_replies": llm.get("context_overflows", 0),
                        "shortened_requests": llm.get("context_shortened", 0),
                        "skipped_calls": llm.get("context_skipped", 0)}}
