"""UID measures: per-token surprisal of prompts from the serving model (real llama.cpp server; a
vLLM-shaped server on loopback for the vLLM response format, which cannot run on this machine)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.scripted_engine import ScriptedEngine
from textgrad.engine import get_engine
from textgrad.serving.llama_process import find_packaged_model
from textgrad.serving.runtime import current_runtime
from utils.reporting import prompt_stats
from utils.reporting.prompt_stats import measure_prompt
from utils.reporting.uid import surprisal_stats, uid_measures

# Short on purpose: llama-cpp-python spends about 0.1 s of CPU per echoed token.
SENTENCE = "Count each object in the list, then add the counts. "
UNIFORM = SENTENCE * 2
# The same text with a run of unpredictable tokens: a spike of surprisal.
LUMPY = SENTENCE + "Xq7 zvborg Kt#9 wumple 0x3F fjord! then add the counts."


@pytest.fixture
def local_engine(local_engine_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    engine = get_engine("local")
    assert engine.base_url == local_engine_url
    return engine


def test_surprisal_stats_are_mean_population_variance_and_max() -> None:
    stats = surprisal_stats([1.0, 2.0, 6.0])
    assert stats == {"mean": 3.0, "variance": pytest.approx(14 / 3), "max": 6.0, "tokens": 3}
    assert surprisal_stats([]) is None
    assert surprisal_stats([1.0, math.nan]) is None


def test_bos_token_of_the_packaged_model_from_its_vocabulary(tmp_path: Path) -> None:
    bos = current_runtime().vocabs.bos_token(find_packaged_model())
    assert bos is not None and bos.text == "<|im_start|>" and bos.added_by_model is False
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 7)  # truncated header
    assert current_runtime().vocabs.bos_token(str(not_gguf)) is None
    assert current_runtime().vocabs.bos_token(str(tmp_path / "missing.gguf")) is None


def test_real_server_uid_is_finite_aligned_and_separates_uniform_from_lumpy(local_engine: Any) -> None:
    pairs = local_engine.prompt_logprobs(UNIFORM)
    assert pairs is not None
    uniform = surprisal_stats([-value for _, value in pairs])
    lumpy = uid_measures(LUMPY, local_engine)
    for measures in (uniform, lumpy):
        assert measures is not None and measures["tokens"] > 8
        assert all(math.isfinite(measures[k]) and measures[k] >= 0 for k in ("mean", "variance", "max"))
    assert lumpy["max"] > uniform["max"] + 2
    assert lumpy["variance"] > uniform["variance"]
    assert lumpy["mean"] > uniform["mean"]

    # Each echoed log-probability must be log p(that token | the tokens before it): compare with the
    # distribution the server gives for the next token after the same prefix (a plain completion).
    tokens = [token for token, _ in pairs]
    first = UNIFORM[: len(UNIFORM) - len("".join(tokens))]  # the unscored first token
    assert first and UNIFORM.endswith("".join(tokens))
    bos = current_runtime().vocabs.bos_token(find_packaged_model())
    compared = 0
    with httpx.Client(trust_env=False, timeout=120) as client:
        for k in (1, 3, 6, 10, 14):
            prefix = bos.text + first + "".join(tokens[:k])
            reply = client.post(f"{local_engine.base_url}/completions", json={
                "model": local_engine.model, "prompt": prefix, "max_tokens": 1, "temperature": 0.0, "logprobs": 20,
            }).json()
            next_token = reply["choices"][0]["logprobs"]["top_logprobs"][0]
            if tokens[k] in next_token:
                assert next_token[tokens[k]] == pytest.approx(pairs[k][1], abs=1e-3)
                compared += 1
    assert compared >= 3


def test_local_base_url_server_is_measured_too(local_engine_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server shared through LOCAL_BASE_URL (scripts/llamacpp_serve.sh) serves the packaged model
    # under its file stem, so the engine can tell which BOS token to use.
    monkeypatch.setenv("LOCAL_BASE_URL", local_engine_url)
    engine = get_engine("local")
    measures = uid_measures("Count the objects, then add.", engine)
    assert measures is not None and measures["tokens"] >= 4 and math.isfinite(measures["variance"])


def test_engines_without_logprobs_record_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    assert uid_measures(UNIFORM, ScriptedEngine()) is None
    assert uid_measures(UNIFORM, get_engine("ollama-llama3.1")) is None
    # vLLM engine whose server is down: no exception, just not available.
    monkeypatch.setenv("VLLM_BASE_URL", "http://127.0.0.1:9/v1")
    assert uid_measures(UNIFORM, get_engine("vllm-some-model")) is None
    assert measure_prompt(UNIFORM, ScriptedEngine())["uid"] is None


def _vllm_echo(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """/v1/completions with echo the way vLLM answers it: the prompt's tokens (the first without a
    log-probability) followed by the generated token."""
    return 200, {"choices": [{"index": 0, "text": body["prompt"] + " Answer", "logprobs": {
        "tokens": ["Count", " the", " items", ".", " Answer"], "token_logprobs": [None, -3.0, -1.0, -2.0, -0.25],
        "text_offset": [0, 5, 9, 15, 16], "top_logprobs": None}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}}


def _one_token_per_word(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    words = body["prompt"].split()
    return 200, {"count": len(words), "max_model_len": 4096, "tokens": list(range(len(words)))}


def _asked(server: Any, route: str) -> list[tuple[dict[str, Any], str]]:
    """(body, Authorization header) of each request the server answered on route."""
    return [(body, auth) for path, body, auth in server.routed_requests if path == route]


@pytest.fixture
def vllm_like(make_fake_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    server = make_fake_server(routes={"/v1/completions": _vllm_echo, "/tokenize": _one_token_per_word})
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    monkeypatch.setenv("VLLM_API_KEY", "vllm-secret")
    return server


def test_vllm_echo_response_gives_the_prompt_tokens_surprisal(vllm_like: Any) -> None:
    engine = get_engine("vllm-tiny")
    measures = uid_measures("Count the items.", engine)
    # prompt tokens after the first: 3, 1, 2 nats; the generated token is not part of the prompt.
    assert measures == {"mean": 2.0, "variance": pytest.approx(2 / 3), "max": 3.0, "tokens": 3}
    body, auth = _asked(vllm_like, "/v1/completions")[0]
    assert body["echo"] is True and body["logprobs"] >= 0 and body["max_tokens"] == 1
    assert body["model"] == "tiny" and body["prompt"] == "Count the items."
    assert auth == "Bearer vllm-secret"


def test_measure_prompt_measures_each_text_once(vllm_like: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_engine("vllm-tiny", use_cache=False)
    first = measure_prompt("Count the items.", engine)
    again = measure_prompt("Count the items.", engine)
    assert first == again and first["uid"]["tokens"] == 3 and len(_asked(vllm_like, "/v1/completions")) == 1
    # The length is the server tokenizer's (one token per word here; the estimate would say 7).
    assert (first["chars"], first["tokens"], first["tokens_estimated"]) == (16, 3, False)
    assert [body["prompt"] for body, _ in _asked(vllm_like, "/tokenize")] == ["Count the items."]
    measure_prompt("Another prompt.", engine)
    assert len(_asked(vllm_like, "/v1/completions")) == 2
    monkeypatch.setenv("FEDTEXTGRAD_UID", "0")
    assert measure_prompt("A third prompt.", engine)["uid"] is None
    assert len(_asked(vllm_like, "/v1/completions")) == 2
    assert prompt_stats.uid_enabled() is False
