"""The server's merge of client prompts into one global prompt, as text."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from textgrad import structured
from textgrad.engine import ChatEngine
from textgrad.errors import ContextOverflowError
from textgrad.serving import budget
from textgrad.serving.stats import call_kind
from utils.tasks.registry import Example, TaskSpec

from .degenerate import DEGENERATE, degenerate_reason

MERGE_SYSTEM = (
    "You combine several system prompts, written independently for the same purpose, into one system prompt. "
    "Your reply is the combined prompt and nothing else."
)

MERGE_TEMPLATE = """Here are {count} system prompts proposed by different clients:

{numbered}

Write one system prompt that merges them. Keep every distinct instruction and strategy they contain, \
state each only once, and leave out repetition. {extra}{tasks}{reply_format}"""

MERGED_REPLY = structured.ReplySpec(field="merged_prompt", tag="MERGED_PROMPT", what="the merged system prompt")

# Uniform Information Density: readers (and models) cope best when information arrives at an even rate.
UID_GUIDANCE = (
    "Spread the information evenly: one instruction per sentence, sentences of similar length and "
    "weight, nothing said twice, and no sentence packed with several ideas at once. "
)

logger = logging.getLogger(__name__)


@dataclass
class Aggregate:
    """The merged trained text. failure: why the merge reply was unusable (no_tags, unparseable_json, empty,
    truncated, degenerate) or context_overflow (the request could not fit); either way concat was used instead."""

    prompt: str
    method: str
    failure: str | None = None

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


def _merge_fields(prompts: list[str], tasks: list[TaskSpec], uid: bool) -> dict[str, str | budget.Cuttable]:
    # Within a small window every client prompt is cut in the middle to an equal share; none is dropped,
    # since the merge must speak for every client.
    return {"count": str(len(prompts)), "tasks": _tasks_note(tasks), "extra": UID_GUIDANCE if uid else "",
            "numbered": budget.Cuttable(items=tuple(prompts), join=number_prompts, noun="client prompts")}


def merge_request(prompts: list[str], tasks: list[TaskSpec], uid: bool, structured_reply: bool = False) -> str:
    fields = budget.as_written(_merge_fields(prompts, tasks, uid))
    return MERGE_TEMPLATE.format(**fields, reply_format=MERGED_REPLY.instruction(structured_reply))


def _ask_merge(engine: ChatEngine, prompts: list[str], tasks: list[TaskSpec], uid: bool,
               max_tokens: int) -> structured.TextAnswer:
    # The reply may be as long as the merged prompt needs: room for the longest client prompt plus a quarter.
    with call_kind("merge"):
        return structured.ask_text(engine, MERGED_REPLY, system=MERGE_SYSTEM, user=MERGE_TEMPLATE,
                                   fields=_merge_fields(prompts, tasks, uid), max_tokens=max_tokens,
                                   min_output=budget.room_to_return(engine, prompts))


def aggregate_prompts(prompts: list[str], method: str, tasks: list[TaskSpec], engine: ChatEngine | None,
                      max_tokens: int = 768, questions: Sequence[Sequence[Example]] = ()) -> Aggregate:
    """Merge client prompts (trained texts, so without answer-format lines) into one trained text. A merge
    that is junk, or a copy of one of the questions (one set per task), is replaced by the concatenation."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if method == "concat" or len(unique) <= 1:
        # Nothing to summarise when every client returned the same prompt: skip the call.
        return Aggregate(concat_prompts(unique), method)
    if method not in ("summarization", "sum_uid"):
        raise ValueError(f"unknown aggregation method {method!r}")
    if engine is None:
        raise ValueError(f"aggregation {method!r} needs an evaluation engine")
    try:
        answer = _ask_merge(engine, unique, tasks, method == "sum_uid", max_tokens)
    except ContextOverflowError as exc:
        logger.warning("the merge request does not fit the context window (%s); concatenating instead", exc)
        return Aggregate(concat_prompts(unique), method, structured.CONTEXT_OVERFLOW)
    failure = answer.failure if answer.value is None else \
        DEGENERATE if degenerate_reason(answer.value, *questions) else None
    if failure is not None:
        # Common with small models. A concatenation keeps every client's instructions, which is safer
        # than adopting free-form chatter or junk as the prompt.
        return Aggregate(concat_prompts(unique), method, failure)
    return Aggregate(answer.value, method)
