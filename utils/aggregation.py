"""The server's merge of client prompts into one global prompt, as text."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from textgrad import budget
from textgrad.engine import ChatEngine
from textgrad.errors import ContextOverflowError

from .tasks import TaskSpec, ensure_format_instruction

MERGE_SYSTEM = (
    "You combine several system prompts, written independently for the same purpose, into one system prompt. "
    "Return only the combined prompt between <MERGED_PROMPT> and </MERGED_PROMPT>."
)

MERGE_TEMPLATE = """Here are {count} system prompts proposed by different clients:

{numbered}

Write one system prompt that merges them. Keep every distinct instruction and strategy they contain, \
state each only once, and leave out repetition. {extra}End the prompt with the answer-format \
instruction as its last line:
{formats}

Reply in exactly this form:
<MERGED_PROMPT>
the merged system prompt
</MERGED_PROMPT>"""

# Uniform Information Density: readers (and models) cope best when information arrives at an even rate.
UID_GUIDANCE = (
    "Spread the information evenly: one instruction per sentence, sentences of similar length and "
    "weight, nothing said twice, and no sentence packed with several ideas at once. "
)

logger = logging.getLogger(__name__)

_MERGED = re.compile(r"<MERGED_PROMPT>(.*?)</MERGED_PROMPT>", re.DOTALL | re.IGNORECASE)


@dataclass
class Aggregate:
    prompt: str
    method: str
    format_failure: bool = False  # the merge reply had no usable tags; concat was used instead
    format_line_appended: bool = False
    context_overflow: bool = False  # the merge request could not fit the context window; concat was used


def concat_prompts(prompts: list[str]) -> str:
    """Client order, exact duplicates removed."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    return "\n\n".join(unique)


def number_prompts(prompts: list[str]) -> str:
    return "\n\n".join(f"Prompt {i}:\n<PROMPT>\n{p}\n</PROMPT>" for i, p in enumerate(prompts, 1))


def _merge_fields(prompts: list[str], tasks: list[TaskSpec], uid: bool) -> dict[str, str | budget.Cuttable]:
    # Within a small window every client prompt is cut in the middle to an equal share; none is dropped,
    # since the merge must speak for every client.
    return {"count": str(len(prompts)), "formats": "\n".join(dict.fromkeys(t.format_instruction for t in tasks)),
            "extra": UID_GUIDANCE if uid else "",
            "numbered": budget.Cuttable(items=tuple(prompts), join=number_prompts, noun="client prompts")}


def merge_request(prompts: list[str], tasks: list[TaskSpec], uid: bool) -> str:
    return MERGE_TEMPLATE.format(**budget.as_written(_merge_fields(prompts, tasks, uid)))


def _ask_merge(engine: ChatEngine, prompts: list[str], tasks: list[TaskSpec], uid: bool, max_tokens: int) -> str:
    # The merged prompt must fit in the reply: room for the longest client prompt plus a quarter.
    return budget.fitted_chat(engine, system=MERGE_SYSTEM, user=MERGE_TEMPLATE, fields=_merge_fields(prompts, tasks, uid),
                              max_tokens=max_tokens, min_output=budget.room_to_return(engine, prompts))


def aggregate_prompts(prompts: list[str], method: str, tasks: list[TaskSpec], engine: ChatEngine | None,
                      max_tokens: int = 768) -> Aggregate:
    """Merge client prompts; the result always carries the answer-format instruction of every task."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    format_failure = overflow = False
    if method == "concat" or len(unique) <= 1:
        # Nothing to summarise when every client returned the same prompt: skip the call.
        merged = concat_prompts(unique)
    elif method in ("summarization", "sum_uid"):
        if engine is None:
            raise ValueError(f"aggregation {method!r} needs an evaluation engine")
        try:
            reply = _ask_merge(engine, unique, tasks, method == "sum_uid", max_tokens)
        except ContextOverflowError as exc:
            logger.warning("the merge request does not fit the context window (%s); concatenating instead", exc)
            reply, overflow = "", True
        match = _MERGED.search(reply or "")
        merged = match.group(1).strip() if match else ""
        if not merged:
            # A reply without the tags is common with small models (a format failure); a request that
            # could not fit got no reply at all. Either way a concatenation keeps every client's
            # instructions, which is safer than adopting free-form chatter as the prompt.
            format_failure = not overflow
            merged = concat_prompts(unique)
    else:
        raise ValueError(f"unknown aggregation method {method!r}")
    guarded = ensure_format_instruction(merged, tasks)
    return Aggregate(prompt=guarded, method=method, format_failure=format_failure,
                     format_line_appended=guarded != merged, context_overflow=overflow)
