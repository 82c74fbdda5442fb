"""The server's merge of client prompts into one global prompt, as text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textgrad.engine import ChatEngine

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

_MERGED = re.compile(r"<MERGED_PROMPT>(.*?)</MERGED_PROMPT>", re.DOTALL | re.IGNORECASE)


@dataclass
class Aggregate:
    prompt: str
    method: str
    format_failure: bool = False  # the merge reply had no usable tags; concat was used instead
    format_line_appended: bool = False


def concat_prompts(prompts: list[str]) -> str:
    """Client order, exact duplicates removed."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    return "\n\n".join(unique)


def merge_request(prompts: list[str], tasks: list[TaskSpec], uid: bool) -> str:
    numbered = "\n\n".join(f"Prompt {i}:\n<PROMPT>\n{p}\n</PROMPT>" for i, p in enumerate(prompts, 1))
    formats = "\n".join(dict.fromkeys(t.format_instruction for t in tasks))
    return MERGE_TEMPLATE.format(count=len(prompts), numbered=numbered, formats=formats,
                                 extra=UID_GUIDANCE if uid else "")


def aggregate_prompts(prompts: list[str], method: str, tasks: list[TaskSpec], engine: ChatEngine | None,
                      max_tokens: int = 768) -> Aggregate:
    """Merge client prompts; the result always carries the answer-format instruction of every task."""
    unique = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    format_failure = False
    if method == "concat" or len(unique) <= 1:
        # Nothing to summarise when every client returned the same prompt: skip the call.
        merged = concat_prompts(unique)
    elif method in ("summarization", "sum_uid"):
        if engine is None:
            raise ValueError(f"aggregation {method!r} needs an evaluation engine")
        reply = engine.generate(merge_request(unique, tasks, uid=method == "sum_uid"),
                                system_prompt=MERGE_SYSTEM, max_tokens=max_tokens)
        match = _MERGED.search(reply or "")
        merged = match.group(1).strip() if match else ""
        if not merged:
            # A reply without the tags is common with small models; a concatenation keeps every
            # client's instructions, which is safer than adopting free-form chatter as the prompt.
            format_failure = True
            merged = concat_prompts(unique)
    else:
        raise ValueError(f"unknown aggregation method {method!r}")
    guarded = ensure_format_instruction(merged, tasks)
    return Aggregate(prompt=guarded, method=method, format_failure=format_failure,
                     format_line_appended=guarded != merged)
