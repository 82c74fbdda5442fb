"""Uniform Information Density (UID) measures of a prompt, from the serving model's log-probabilities.

The surprisal of a token is -log p(token | the tokens before it), in nats (natural log, as the servers
return it). UID asks for information spread evenly over a text, so the measures are the mean, the
variance and the maximum surprisal over the prompt's tokens. The first token has no conditional
log-probability and is skipped.

The log-probabilities come from the engine (ChatEngine.prompt_logprobs): backends that return them
(textgrad.serving.backends.Backend.prompt_logprobs: the embedded llama.cpp server and vLLM) give measures,
others None ("not available"), and so does any failure: a measurement never stops a run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from textgrad.serving.backends import backends_with_prompt_logprobs

logger = logging.getLogger(__name__)

UNIT = "nats"


def surprisal_stats(surprisals: list[float]) -> dict[str, float | int] | None:
    """mean, (population) variance, max and count of per-token surprisals; None for no tokens."""
    values = [float(s) for s in surprisals]
    if not values or not all(math.isfinite(v) for v in values):
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return {"mean": mean, "variance": variance, "max": max(values), "tokens": len(values)}


def uid_measures(text: str, engine: Any) -> dict[str, float | int] | None:
    """{"mean", "variance", "max", "tokens"} of per-token surprisal (nats) of `text` under `engine`'s
    model, or None where the engine gives no log-probabilities. Never raises."""
    prompt_logprobs = getattr(engine, "prompt_logprobs", None)
    if prompt_logprobs is None:  # e.g. an in-process test engine
        return None
    try:
        logprobs = prompt_logprobs(text)
    except Exception as exc:  # noqa: BLE001 - a measurement must never stop a run
        backend = getattr(getattr(engine, "backend", None), "kind", "unknown")
        able = [b.prefix if b.prefix == "local" else f"{b.prefix}<model>" for b in backends_with_prompt_logprobs()]
        logger.warning("UID measures not available from %s (a %s server): it returned no prompt log-probabilities "
                       "(%s: %s); the backends that give them: %s", getattr(engine, "name", engine), backend,
                       type(exc).__name__, exc, ", ".join(able))
        return None
    return surprisal_stats([-value for _, value in logprobs]) if logprobs is not None else None
