"""Splitting one task's training examples across federated clients."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import TYPE_CHECKING

from utils.tasks.registry import Example

if TYPE_CHECKING:
    import numpy as np


def _check_clients(examples: list[Example], num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"need at least 1 client, got {num_clients}")
    if num_clients > len(examples):
        raise ValueError(
            f"cannot give {num_clients} clients at least one example each from only {len(examples)} "
            "examples; use fewer clients or a larger training split"
        )


def iid_partition(examples: list[Example], num_clients: int, seed: int) -> list[list[Example]]:
    """Random equal shards (sizes differ by at most one); disjoint and covering all examples."""
    _check_clients(examples, num_clients)
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    base, extra = divmod(len(shuffled), num_clients)
    shards = []
    start = 0
    for client in range(num_clients):
        size = base + (1 if client < extra else 0)
        shards.append(shuffled[start:start + size])
        start += size
    return shards


def _split_by_proportions(items: list[Example], proportions: np.ndarray) -> list[list[Example]]:
    import numpy as np

    cuts = (np.cumsum(proportions)[:-1] * len(items)).round().astype(int)
    bounds = [0, *cuts.tolist(), len(items)]
    return [items[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def dirichlet_partition(
    examples: list[Example], num_clients: int, alpha: float, seed: int
) -> list[list[Example]]:
    """Label-skewed shards: each answer value is spread over clients by Dirichlet(alpha) proportions.

    Small ``alpha`` concentrates each answer value on few clients, so clients see
    different answer distributions (the paper's heterogeneity knob). Every client
    still gets at least one example, because a client without data cannot train.
    """
    _check_clients(examples, num_clients)
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    import numpy as np  # only a Dirichlet split needs it, and it is a large import

    rng = np.random.default_rng(seed)

    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.target.strip()].append(example)

    shards: list[list[Example]] = [[] for _ in range(num_clients)]
    # Sorted labels make the result independent of dict ordering quirks.
    for label in sorted(groups):
        group = groups[label]
        order = rng.permutation(len(group))
        items = [group[i] for i in order]
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
            # Extremely small alpha can underflow; the limit is "all on one client".
            proportions = np.eye(num_clients)[rng.integers(num_clients)]
        for shard, part in zip(shards, _split_by_proportions(items, proportions), strict=True):
            shard.extend(part)

    for shard in shards:
        if not shard:
            donor = max(shards, key=len)
            shard.append(donor.pop())
    return shards
