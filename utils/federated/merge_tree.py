"""The shape of a merge that does not fit one request: prompts merged in groups, level by level.

When the prompts to merge do not fit one merge request (the evaluation engine's window less the request's
own text and the room for its reply), the server merges them in groups that fit, then merges the results
the same way, until one prompt remains: a tree whose leaves are the client prompts. A group is a run of
consecutive prompts in client order (client0, client1, ...), so the same prompts always form the same
groups; of the splits into the fewest groups that fit, the one whose largest group is smallest (a prompt
left alone in its group goes up to the next level unmerged, costing no request). The groups of a level
are merged concurrently.

`fitting_groups` forms the groups; the merge itself (utils.federated.aggregation) sends them; the plan of a
run (utils.federated.plan) and --estimate call `planned_levels` to foresee the same tree for prompts of an
assumed size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def _consecutive(sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Indices in consecutive groups, each filled while its sizes sum to at most limit."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if groups and total + size <= limit:
            groups[-1].append(index)
            total += size
        else:
            groups.append([index])
            total = size
    return groups


def fitting_groups(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """The indices of sizes (token counts, in client order) in consecutive groups whose sizes sum to at most
    capacity: the fewest such groups and, among those splits, the one with the smallest largest group."""
    if not sizes:
        return []
    if max(sizes) > capacity:
        raise ValueError(f"a prompt of {max(sizes)} tokens cannot fit a group of {capacity}")
    fewest = len(_consecutive(sizes, capacity))
    low, high = max(sizes), capacity
    while low < high:  # the smallest limit that still needs no more groups
        middle = (low + high) // 2
        if len(_consecutive(sizes, middle)) <= fewest:
            high = middle
        else:
            low = middle + 1
    return _consecutive(sizes, low)


def planned_levels(inputs: int, size: int, capacity: int, budget: int) -> list[int]:
    """Merge requests per level for `inputs` distinct prompts of `size` tokens each (their numbering
    included), when a request holds `capacity` tokens of prompts and each merge comes back at no more than
    min(budget, the sum of its inputs). Empty when nothing needs merging or no two prompts fit one request."""
    sizes, levels = [size] * inputs, []
    while len(sizes) > 1 and max(sizes) <= capacity:
        groups = fitting_groups(sizes, capacity)
        if all(len(group) == 1 for group in groups):
            break
        levels.append(sum(len(group) > 1 for group in groups))
        sizes = [min(budget, sum(sizes[i] for i in group)) if len(group) > 1 else sizes[group[0]]
                 for group in groups]
    return levels


@dataclass(frozen=True)
class MergeLimits:
    """A run's merges, once the engines' windows are known. max_prompt_tokens: the budget of a merged prompt;
    capacity: tokens one merge request has for its numbered prompts (None: the run merges without an LLM);
    client_prompt: the tokens a client's prompt is assumed to take in one (the starting prompt, a quarter
    longer per local step, numbered), from which the plan foresees the tree."""

    max_prompt_tokens: int
    capacity: int | None
    client_prompt: int

    def levels(self, inputs: int) -> list[int]:
        """The merge requests per level the plan assumes for `inputs` client prompts (at least one request
        when two or more differ)."""
        if self.capacity is None:
            return []
        return planned_levels(inputs, self.client_prompt, self.capacity, self.max_prompt_tokens) or [1]


@dataclass
class MergeTree:
    """What one round's merge did, as results.json records it.

    levels: merge requests per level, level 1 merging client prompts (its sum is the round's merge requests,
    retries included); inputs: the distinct prompts merged; retries: requests asked again because the merge
    came back over --max_prompt_tokens (or cut at its token limit); over_budget: merges still over it after
    that; left_out: prompts too long for any merge request (never cut: left out of the merge, and named in a
    warning); failures: merges whose reply held no usable prompt, by kind (that group was concatenated)."""

    inputs: int
    levels: list[int] = field(default_factory=list)
    retries: int = 0
    over_budget: int = 0
    left_out: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def requests(self) -> int:
        return sum(self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "depth": self.depth, "requests": self.requests}

    def shape(self) -> str:
        """"6+2+1" (requests per level); "none" when no request was needed."""
        return "+".join(map(str, self.levels)) or "none"
