"""Prompt-complexity measures that need no model: character entropy and zlib compression ratio.

With the length in tokens and the UID surprisal statistics (utils.reporting.uid) they are what the paper
compares prompts by: a merge that repeats itself compresses well (low ratio), a varied text uses more of
its alphabet evenly (high entropy). Our own implementation of the textbook definitions.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter

ZLIB_LEVEL = 9  # the best compression: the ratio measures the text, not a speed setting
COMPLEXITY = ("entropy", "compression_ratio")  # the keys of complexity(), as results.json records them


def char_entropy(text: str) -> float:
    """Shannon entropy of the text's characters in bits per character: -sum p(c) log2 p(c) over the distinct
    characters c with p(c) their share of the text (0.0 for an empty text or a single repeated character)."""
    if not text:
        return 0.0
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in Counter(text).values()) + 0.0  # + 0.0: no -0.0


def compression_ratio(text: str) -> float | None:
    """zlib-compressed size over raw size, both in UTF-8 bytes (lower: more repetitive); None for an empty text."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, ZLIB_LEVEL)) / len(raw) if raw else None


def complexity(text: str) -> dict[str, float | None]:
    """{"entropy": bits per character, "compression_ratio": compressed / raw bytes} of text."""
    return dict(zip(COMPLEXITY, (char_entropy(text), compression_ratio(text)), strict=True))
