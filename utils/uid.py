"""Uniform Information Density (UID) measures of a prompt, from the serving model's log-probabilities.

The surprisal of a token is -log p(token | the tokens before it), in nats (natural log, as the servers
return it). UID asks for information spread evenly over a text, so the measures are the mean, the
variance and the maximum surprisal over the prompt's tokens. The first token has no conditional
log-probability and is skipped.

The log-probabilities come from an OpenAI-compatible /completions request that echoes the prompt
(echo=True, logprobs, max_tokens=1): the embedded llama.cpp server (engine `local`, llama-cpp-python)
and vLLM (`vllm-<model>`) answer it. Other engines give None ("not available"), and so does any
failure: a measurement never stops a run. These requests are not counted as LLM calls of the run.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

import httpx

from textgrad.cache import ResponseCache
from textgrad.engine import ChatEngine

from .gguf_vocab import bos_token

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
    try:
        logprobs = prompt_logprobs(text, engine)
    except Exception as exc:  # noqa: BLE001 - a measurement must never stop a run
        logger.warning("UID measures not available from %s: %s", getattr(engine, "name", engine), exc)
        return None
    return surprisal_stats([-value for _, value in logprobs]) if logprobs is not None else None


def prompt_logprobs(text: str, engine: Any) -> list[tuple[str, float]] | None:
    """(token, log p(token | tokens before it)) for every token of `text` after the first, from the
    engine's server; None for engines that do not return prompt log-probabilities. May raise."""
    if not text.strip() or not isinstance(engine, ChatEngine):
        return None
    if engine.name == "local":
        return _llamacpp_logprobs(text, engine)
    if engine.name.startswith("vllm-"):
        return _echo_logprobs(engine, text, os.environ.get("VLLM_API_KEY") or "EMPTY")
    return None


def _echo_logprobs(engine: ChatEngine, prompt: str, api_key: str) -> list[tuple[str, float]]:
    """(token, log-probability) of every echoed prompt token that has one (not the first)."""
    # Kept in the engine's response cache like chat replies, so a re-run makes no request at all.
    key = ResponseCache.make_key(engine.model, [{"role": "echo", "content": prompt}], {"logprobs": 1})
    hit = engine.cache.get(key) if engine.cache is not None else None
    if hit is not None and isinstance(hit.get("logprobs"), list):
        return [(str(token), float(value)) for token, value in hit["logprobs"]]
    pairs = _request_logprobs(engine, prompt, api_key)
    if engine.cache is not None:
        try:
            engine.cache.put(key, {"model": engine.model, "logprobs": pairs})
        except OSError as exc:
            logger.warning("could not write the response cache in %s: %s", engine.cache.directory, exc)
    return pairs


def _request_logprobs(engine: ChatEngine, prompt: str, api_key: str) -> list[tuple[str, float]]:
    url = engine.base_url
    loopback = httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")
    # Under the endpoint's cap like every chat call: measurements run beside validation requests.
    with engine.request_slot():
        response = _http_client(trust_env=not loopback).post(
            f"{url}/completions", headers={"Authorization": f"Bearer {api_key}"}, timeout=engine.request_timeout,
            json={"model": engine.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                  "echo": True, "logprobs": 1})
    response.raise_for_status()
    body = response.json()
    logprobs = body["choices"][0]["logprobs"]
    # The arrays cover the prompt and then the generated token(s): drop the generated ones.
    generated = int((body.get("usage") or {}).get("completion_tokens") or 0)
    pairs = list(zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True))
    return [(token, float(value)) for token, value in pairs[:len(pairs) - generated] if value is not None]


@functools.cache
def _http_client(trust_env: bool) -> httpx.Client:
    # One pooled client per process: a new client per measurement builds an SSL context each time
    # (about 25 ms of CPU) and opens a new connection.
    return httpx.Client(trust_env=trust_env)


def _llamacpp_logprobs(text: str, engine: ChatEngine) -> list[tuple[str, float]] | None:
    # llama-cpp-python pairs echoed token i with the log-probabilities computed *after* token i unless
    # the prompt starts with the model's BOS token (which it then strips). So the BOS is put in front
    # explicitly for models that do not add it themselves; that requires knowing which model is served.
    model_path = _served_model_path(engine)
    bos = bos_token(model_path) if model_path else None
    if bos is None:
        return None
    prefix = "" if bos.added_by_model else bos.text
    pairs = _echo_logprobs(engine, prefix + text, os.environ.get("LOCAL_API_KEY") or "local")
    if not text.endswith("".join(token for token, _ in pairs)):
        return None  # the BOS was not recognised as such: the values would be misaligned
    return pairs


def _served_model_path(engine: ChatEngine) -> str | None:
    """The GGUF file behind the `local` engine: the embedded server's, or for LOCAL_BASE_URL the one
    LOCAL_MODEL_PATH / the packaged model names, if the server reports that model (our alias is the
    file's stem, as scripts/llamacpp_serve.sh and the embedded server set it)."""
    from textgrad.local_server import find_packaged_model, local_server_info

    info = local_server_info()
    if info is not None and info["base_url"] == engine.base_url:
        return str(info["model_path"])
    path = find_packaged_model()
    return path if engine.model in (Path(path).stem, path) else None
