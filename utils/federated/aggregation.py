"""The server's merge of client prompts into one global prompt, as text.

A merge by an LLM (summarization, sum_uid) sends the prompts whole, never cut: when they do not fit one
request they are merged in groups, level by level (utils.federated.merge_tree). Every merge request states
the budget of the merged prompt (--max_prompt_tokens), and a merge that comes back over it is asked for once
more, with a note that the last one was too long; one still over is kept and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from textgrad import structured
from textgrad.engine import ChatEngine
from textgrad.errors import ContextOverflowError
from textgrad.parallel import run_concurrently
from textgrad.serving import budget
from textgrad.serving.stats import call_kind
from textgrad.serving.tokenizers import estimate_tokens
from textgrad.serving.window import message_overhead
from utils.tasks.registry import Example, TaskSpec

from .degenerate import DEGENERATE, RequestTexts, degenerate_reason
from .merge_tree import MergeLimits, MergeTree, fitting_groups

MERGE_SYSTEM = (
    "You combine several system prompts, written independently for the same purpose, into one system prompt. "
    "Your reply is the combined prompt and nothing else."
)

MERGE_TEMPLATE = """Here are {count} system prompts proposed by different clients:

{numbered}

Write one system prompt that merges them. Keep every distinct instruction and strategy they contain, \
state each only once, and leave out repetition. {extra}{tasks}{limit}{reply_format}"""

LIMIT_NOTE = "The merged prompt must not exceed {limit} tokens (about {words} words). "
OVER_NOTE = ("An earlier merge of these prompts came out at {tokens} tokens, over that limit: write a shorter one "
             "that still keeps every distinct instruction. ")

MERGED_REPLY = structured.ReplySpec(field="merged_prompt", tag="MERGED_PROMPT", what="the merged system prompt")

# Uniform Information Density: readers (and models) cope best when information arrives at an even rate.
UID_GUIDANCE = (
    "Spread the information evenly: one instruction per sentence, sentences of similar length and "
    "weight, nothing said twice, and no sentence packed with several ideas at once. "
)
# The numbering around one prompt in a merge request, with a three-digit number and the blank line after it.
NUMBERING = "Prompt 100:\n<PROMPT>\n\n</PROMPT>\n\n"
MERGE_MESSAGES = [{"role": "system"}, {"role": "user"}]
# A merged prompt's budget below this says too little to be worth merging for.
MIN_PROMPT_TOKENS = 32

logger = logging.getLogger(__name__)


@dataclass
class Aggregate:
    """The merged trained text. failure: why a merge reply was unusable (no_tags, unparseable_json, empty,
    truncated, degenerate) or context_overflow (prompts that no merge request could hold); either way those prompts were
    concatenated instead. tree: the merge's shape when an LLM merged (None for concat or a single prompt)."""

    prompt: str
    method: str
    failure: str | None = None
    tree: MergeTree | None = None

    @property
    def format_failure(self) -> bool:
        return self.failure is not None and self.failure != structured.CONTEXT_OVERFLOW

    @property
    def context_overflow(self) -> bool:
        return self.failure == structured.CONTEXT_OVERFLOW


def concat_prompts(prompts: list[str]) -> str:
    """Client order, exact duplicates removed."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    return "\n\n".join(unique)


def number_prompts(prompts: list[str]) -> str:
    return "\n\n".join(f"Prompt {i}:\n<PROMPT>\n{p}\n</PROMPT>" for i, p in enumerate(prompts, 1))


def _tasks_note(tasks: list[TaskSpec]) -> str:
    # The answer-format lines are not part of the prompts (each task's questions get their own line when
    # served), so the merge never sees or writes one; in a heterogeneous run it must serve every task.
    if len(tasks) < 2:
        return ""
    return f"The merged prompt serves questions of {len(tasks)} tasks ({', '.join(t.name for t in tasks)}): keep what each needs. "


def _limit_note(limit: int | None, over: int | None) -> str:
    if limit is None:
        return ""
    return LIMIT_NOTE.format(limit=limit, words=limit * 3 // 4) + (OVER_NOTE.format(tokens=over) if over else "")


def _merge_fields(prompts: list[str], tasks: list[TaskSpec], uid: bool, limit: int | None,
                  over: int | None) -> dict[str, str]:
    return {"count": str(len(prompts)), "numbered": number_prompts(prompts), "tasks": _tasks_note(tasks),
            "extra": UID_GUIDANCE if uid else "", "limit": _limit_note(limit, over)}


def merge_request(prompts: list[str], tasks: list[TaskSpec], uid: bool, structured_reply: bool = False,
                  limit: int | None = None, over: int | None = None) -> str:
    """The user message of a merge of prompts (as sent: no part is ever cut)."""
    return MERGE_TEMPLATE.format(**_merge_fields(prompts, tasks, uid, limit, over),
                                 reply_format=MERGED_REPLY.instruction(structured_reply))


def merge_request_texts(prompts: list[str], tasks: list[TaskSpec], uid: bool, structured_reply: bool = False,
                        limit: int | None = None, over: int | None = None) -> RequestTexts:
    """A merge request's own texts (system prompt; the user message without the prompts, with its reply-format
    line) and the prompts it merges, which a merge may keep and must not be made of the rest
    (utils.federated.degenerate)."""
    own = MERGE_TEMPLATE.format(**{**_merge_fields(prompts, tasks, uid, limit, over), "numbered": ""},
                                reply_format=MERGED_REPLY.instruction(structured_reply))
    return RequestTexts(ours=(MERGE_SYSTEM, own), edited=tuple(prompts))


def merge_reply_tokens(max_tokens: int, limit: int, window: int) -> int:
    """The reply a merge request keeps room for: a merge of `limit` tokens given back whole (and a quarter
    more, so that one over the limit is seen and asked for again rather than cut), or --merge_max_tokens,
    which the context budget may lower to a quarter of the window."""
    return max(budget.room_for(limit), min(max_tokens, window // 4))


def merge_capacity(count: Callable[[str], int], window: int, tasks: list[TaskSpec], uid: bool, max_tokens: int,
                   limit: int, structured_reply: bool = True) -> int:
    """Tokens one merge request of this window has for its numbered prompts, beside its own text and its
    reply. Counted with the structured reply's instruction and the over-limit note (the longer request)."""
    fixed = count(MERGE_SYSTEM) + count(MERGE_TEMPLATE.format(
        count=100, numbered="", tasks=_tasks_note(tasks), extra=UID_GUIDANCE if uid else "",
        limit=_limit_note(limit, 10 * limit), reply_format=MERGED_REPLY.instruction(structured_reply)))
    return window - fixed - merge_reply_tokens(max_tokens, limit, window) - message_overhead(MERGE_MESSAGES)


def numbered_size(count: Callable[[str], int], prompt: str) -> int:
    """Tokens a prompt takes in a merge request, with its numbering."""
    return count(prompt) + count(NUMBERING)


@dataclass
class _GroupMerge:
    """What merging one group (or one level's groups) gave: the merged texts and what it took."""

    texts: list[str]
    sent: int = 0
    retries: int = 0
    over_budget: int = 0
    failures: list[str] = field(default_factory=list)

    def plus(self, other: _GroupMerge) -> _GroupMerge:
        return _GroupMerge(self.texts + other.texts, self.sent + other.sent, self.retries + other.retries,
                           self.over_budget + other.over_budget, self.failures + other.failures)

    def record(self, tree: MergeTree) -> list[str]:
        """Add this level to the tree; the texts it goes on with."""
        tree.levels.append(self.sent)
        tree.retries += self.retries
        tree.over_budget += self.over_budget
        for kind in self.failures:
            tree.failures[kind] = tree.failures.get(kind, 0) + 1
        return self.texts


class _Merger:
    """One round's merge tree: the requests of one engine under one budget, and what they did."""

    def __init__(self, engine: ChatEngine, tasks: list[TaskSpec], uid: bool, max_tokens: int,
                 limit: int | None, questions: Sequence[Sequence[Example]] = ()) -> None:
        self.engine, self.tasks, self.uid, self.max_tokens, self.limit = engine, tasks, uid, max_tokens, limit
        self.questions = questions
        self.count: Callable[[str], int] = getattr(engine, "count_tokens", estimate_tokens)

    def request_texts(self, prompts: list[str], over: int | None) -> RequestTexts:
        structured_reply = structured.request_format(self.engine, MERGED_REPLY) is not None
        return merge_request_texts(prompts, self.tasks, self.uid, structured_reply, self.limit, over)

    def ask(self, prompts: list[str], over: int | None = None) -> structured.TextAnswer:
        fields = _merge_fields(prompts, self.tasks, self.uid, self.limit, over)
        room = budget.room_for(self.limit) if self.limit is not None else budget.room_to_return(self.engine, prompts)
        with call_kind("merge"):
            return structured.ask_text(self.engine, MERGED_REPLY, system=MERGE_SYSTEM, user=MERGE_TEMPLATE,
                                       fields=fields, max_tokens=self.max_tokens, min_output=room)

    def over(self, answer: structured.TextAnswer) -> int | None:
        """The merge's tokens when it is over the limit (or was cut at its token limit), else None."""
        if self.limit is None:
            return None
        if answer.failure == "truncated":
            return self.count(answer.text)
        if answer.value is None:
            return None
        tokens = self.count(answer.value)
        return tokens if tokens > self.limit else None

    def merge_group(self, prompts: list[str]) -> _GroupMerge:
        """The group's merge; its parts' merges when its request turned out not to fit after all."""
        try:
            answer = self.ask(prompts)
        except ContextOverflowError:  # counted by the engine: the window was smaller than it said
            if len(prompts) == 1:
                return _GroupMerge(prompts)
            half = len(prompts) // 2
            return self.merge_group(prompts[:half]).plus(self.merge_group(prompts[half:]))
        done, tokens = _GroupMerge([], sent=1), self.over(answer)
        if tokens is not None:
            done.sent, done.retries = 2, 1
            try:
                again = self.ask(prompts, over=tokens)
            except ContextOverflowError:
                again = answer
            usable = [a for a in (answer, again) if a.value is not None]
            answer = min(usable, key=lambda a: self.count(a.value or "")) if usable else again
            done.over_budget = int(answer.value is not None and self.over(answer) is not None)
        failure = (answer.failure or "empty") if answer.value is None else \
            DEGENERATE if degenerate_reason(answer.value, *self.questions,
                                            request=self.request_texts(prompts, tokens)) else None
        if failure is not None:
            # Common with small models. A concatenation keeps every client's instructions, which is safer
            # than adopting free-form chatter or junk as the prompt.
            done.failures.append(failure)
            done.texts = [concat_prompts(prompts)]
        else:
            done.texts = [answer.value]
        return done

    def merge(self, prompts: list[str], method: str) -> Aggregate:
        tree = MergeTree(inputs=len(prompts))
        window = getattr(self.engine, "context_window", None)
        if window is None or self.limit is None:  # an engine that does not know its window: one request
            return self._result(self.merge_group(prompts).record(tree), method, tree)
        capacity = merge_capacity(self.count, window, self.tasks, self.uid, self.max_tokens, self.limit,
                                  structured.request_format(self.engine, MERGED_REPLY) is not None)
        sizes = [numbered_size(self.count, p) for p in prompts]
        fits = [size <= capacity for size in sizes]
        if not all(fits):
            tree.left_out = fits.count(False)
            logger.warning("%d of %d client prompts are too long for a merge request of the %d-token window of %s "
                           "(%d tokens for prompts): left out of the merge, whole; lower --max_prompt_tokens or "
                           "--max_steps, or use a larger window", tree.left_out, len(prompts), window,
                           self.engine.name, capacity)
            if not any(fits):
                tree.failures[structured.CONTEXT_OVERFLOW] = 1
                return Aggregate(concat_prompts(prompts), method, structured.CONTEXT_OVERFLOW, tree)
            prompts, sizes = [p for p, ok in zip(prompts, fits, strict=True) if ok], [s for s in sizes if s <= capacity]
        while len(prompts) > 1:
            groups = [[prompts[i] for i in group] for group in fitting_groups(sizes, capacity)]
            if all(len(group) == 1 for group in groups):
                logger.warning("no two of %d prompts fit one merge request of %d tokens: concatenated instead "
                               "(a larger window gives merges room)", len(prompts), capacity)
                tree.failures[structured.CONTEXT_OVERFLOW] = tree.failures.get(structured.CONTEXT_OVERFLOW, 0) + 1
                return self._result([concat_prompts(prompts)], method, tree)
            done = run_concurrently([lambda g=g: self.merge_group(g) if len(g) > 1 else _GroupMerge(g)
                                     for g in groups])
            level = _GroupMerge([])
            for merged in done:
                level = level.plus(merged)
            prompts = level.record(tree)
            sizes = [numbered_size(self.count, p) for p in prompts]
        return self._result(prompts, method, tree)

    @staticmethod
    def _result(prompts: list[str], method: str, tree: MergeTree) -> Aggregate:
        failure = next(iter(tree.failures), None)
        return Aggregate(concat_prompts(prompts) if len(prompts) > 1 else prompts[0], method, failure, tree)


def aggregate_prompts(prompts: list[str], method: str, tasks: list[TaskSpec], engine: ChatEngine | None,
                      max_tokens: int = 768, max_prompt_tokens: int | None = None,
                      questions: Sequence[Sequence[Example]] = ()) -> Aggregate:
    """Merge client prompts (trained texts, so without answer-format lines, in client order) into one trained
    text. max_prompt_tokens: the merged prompt's budget (a run passes its own, utils.federated.runner); None: a
    fifth of the engine's window, or for an engine that does not know its window no budget and one request.
    A merge that is junk, or a copy of one of the questions (one set per task), is replaced by the
    concatenation of its inputs."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if method == "concat" or len(unique) <= 1:
        # Nothing to summarise when every client returned the same prompt: skip the call.
        return Aggregate(concat_prompts(unique), method)
    if method not in ("summarization", "sum_uid"):
        raise ValueError(f"unknown aggregation method {method!r}")
    if engine is None:
        raise ValueError(f"aggregation {method!r} needs an evaluation engine")
    window = getattr(engine, "context_window", None)
    limit = max_prompt_tokens if max_prompt_tokens is not None else (
        default_max_prompt_tokens(window) if window is not None else None)
    return _Merger(engine, tasks, method == "sum_uid", max_tokens, limit, questions).merge(unique, method)


def merge_limits(count: Callable[[str], int], test_window: int, evaluation_window: int, method: str | None,
                 tasks: list[TaskSpec], start: str, max_steps: int, max_tokens: int, max_prompt_tokens: int | None,
                 structured_reply: bool) -> MergeLimits:
    """The run's merge limits for its engines' windows (see MergeLimits). Without --max_prompt_tokens the budget
    is default_max_prompt_tokens, lowered where a merge request could not hold two prompts of that size; a
    budget (given or not) that a merge request cannot hold twice is a ValueError naming the largest that fits."""
    window = min(test_window, evaluation_window)
    limit = max_prompt_tokens or default_max_prompt_tokens(window)
    start_tokens = count(start)
    client_prompt = start_tokens + max_steps * (start_tokens // 4) + count(NUMBERING)
    if method not in ("summarization", "sum_uid"):
        return MergeLimits(limit, None, client_prompt)

    def capacity(budget: int) -> int:
        return merge_capacity(count, evaluation_window, tasks, method == "sum_uid", max_tokens, budget,
                              structured_reply)

    def holds_two(budget: int) -> bool:
        return capacity(budget) >= 2 * (budget + count(NUMBERING))

    if not holds_two(limit):
        low, high = 0, limit  # the largest budget that holds two is in [low, high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if holds_two(middle) else (low, middle)
        if max_prompt_tokens is not None or low < MIN_PROMPT_TOKENS:
            fix = f"use at most --max_prompt_tokens {low}" if low >= MIN_PROMPT_TOKENS else "use --aggregate_method concat"
            raise ValueError(f"a merge request in the {evaluation_window}-token window of the evaluation engine "
                             f"cannot hold two prompts of {limit} tokens beside its own text and the room to return "
                             f"one: {fix}, or a larger window (--max_context, the server's)")
        limit = low
    return MergeLimits(limit, capacity(limit), client_prompt)


def default_max_prompt_tokens(window: int) -> int:
    """--max_prompt_tokens when not given: a fifth of the smaller window of the run's engines. A merge request
    then holds three prompts of that size beside the room to return one, and the optimizer request the prompt,
    its feedback and the room to return it a quarter longer; an answer keeps four fifths for question and reply."""
    return window // 5


def warn_if_over_budget(round_index: int, prompt: str, max_prompt_tokens: int, engine: ChatEngine) -> None:
    """Before a concatenated prompt is served: say so when it is over the budget that leaves served requests
    room (its requests that cannot fit are then skipped and counted), with the ways out."""
    tokens = engine.count_tokens(prompt)
    if tokens > max_prompt_tokens:
        logger.warning("round %d: the concatenated prompt has %d tokens, over the %d that leave its requests room "
                       "in the %d-token window of %s (--max_prompt_tokens): requests with it that cannot fit are "
                       "skipped and counted. Use --aggregate_method summarization (it merges within the budget), a "
                       "larger window (--max_context, the server's), or fewer --clients_per_round", round_index,
                       tokens, max_prompt_tokens, engine.context_window, engine.name)
