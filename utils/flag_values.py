"""The values flags take: the argparse types of numeric flags, each a finite number within its range, and the
largest sensible value of each flag (LIMITS), checked once the flags are parsed (utils.config)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .run_config import RunConfig


def within(convert: Callable[[str], float], low: float, high: float | None, noun: str) -> Callable[[str], Any]:
    """An argparse type: a finite number from low to high (no upper bound if None), both included."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"{low:g} or more" if high is None else f"between {low:g} and {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value:g}")
        return value
    return parse


positive_int = within(int, 1, None, "a whole number")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {value}")
    return value


def context_size(text: str) -> int:
    value = positive_int(text)
    if value < 256:
        raise argparse.ArgumentTypeError(f"must be at least 256 tokens to hold a prompt and a reply, got {value}")
    return value


def split_sizes(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST such as 12,20,20, got {text!r}")
    return tuple(positive_int(p) for p in parts)  # type: ignore[return-value]


def price(text: str) -> str:
    from utils.estimate.prices import parse_price_overrides

    try:
        parse_price_overrides([text], "price")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected USD per million tokens as 2.5 or ENGINE=2.5, got {text!r}") from None
    return text


# The largest sensible value of each numeric flag (the smallest is its type's): past it a value is a typo
# or a unit mixed up, not a plan, and it is refused before anything runs. A round, step or client more
# is a line here; so is a longer timeout.
LIMITS: dict[str, float] = {
    "max_epochs": 10_000, "max_steps": 1_000, "batch_size": 10_000, "homo_split_num": 1_000,
    "momentum_window": 1_000, "max_concurrency": 1_024, "local_servers": 16, "max_tokens": 1_048_576,
    "feedback_max_tokens": 1_048_576, "optimizer_max_tokens": 1_048_576, "merge_max_tokens": 1_048_576,
    "max_context": 10_485_760, "screen_size": 10_000, "leak_min_words": 10_000, "dirichlet_alpha": 1e6,
    "request_timeout": 86_400.0, "estimate_latency": 86_400.0, "split_sizes": 1_000_000,
}
SEED_LIMIT = 2**63  # seeds are kept in JSON and YAML: within a 64-bit integer


def limit_problem(args: RunConfig) -> str | None:
    """What is past its limit among the parsed flags (LIMITS, and the seed within 64 bits), or None."""
    for flag, limit in LIMITS.items():
        value = getattr(args, flag)
        for number in value if isinstance(value, tuple | list) else [value]:
            if number is not None and number > limit:
                shown = [f"{n:g}" if isinstance(n, float) else str(n) for n in (number, limit)]
                return f"--{flag} {shown[0]} is more than {shown[1]}, the largest this program takes: check the value"
    if not -SEED_LIMIT <= args.seed < SEED_LIMIT:
        return f"--seed {args.seed} does not fit in 64 bits: choose a smaller seed"
    return None
