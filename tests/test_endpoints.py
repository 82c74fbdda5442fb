"""textgrad.serving.backends and .http: the engine-name grammar, what each backend can do, one pooled HTTP client
per server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from textgrad.engine import get_engine
from textgrad.serving.backends import BACKENDS, engine_name_problem, split_engine_name
from textgrad.serving.runtime import Runtime
from utils.config import UsageError, check_engine_name


@pytest.fixture(autouse=True)
def _no_endpoint_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOCAL_BASE_URL", "VLLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def test_names_split_into_backend_and_model() -> None:
    assert [(b.kind, m) for b, m in map(split_engine_name, ["local", "ollama-llama3.1:8b", "vllm-org/m",
                                                               "sglang-q", "gpt-4o", "localhost"])] == [
        ("local", None), ("ollama", "llama3.1:8b"), ("vllm", "org/m"), ("sglang", "q"), ("openai", "gpt-4o"),
        ("openai", "localhost")]


@pytest.mark.parametrize(("name", "problem"), [
    ("vllm-", "names no model: write it as vllm-<model>"),
    ("gpt 4o", "is not an engine name: use local, ollama-<model>, vllm-<model>, sglang-<model> or an OpenAI "
               "model such as gpt-4o"),
    ("olama-llama3", "has an unknown engine prefix 'olama-': use local, ollama-<model>, vllm-<model>, "
                     "sglang-<model> or an OpenAI model such as gpt-4o (did you mean ollama?)"),
    ("llama3", "is not a known engine: use local, ollama-<model>, vllm-<model>, sglang-<model> or an OpenAI "
               "model such as gpt-4o, or set OPENAI_BASE_URL to serve other names from an OpenAI-compatible server"),
])
def test_the_grammar_words_each_problem_and_config_wraps_it(name: str, problem: str) -> None:
    assert engine_name_problem(name) == problem
    with pytest.raises(UsageError) as raised:
        check_engine_name(name, "test_engine")
    assert str(raised.value) == f"--test_engine {name!r} {problem}"


@pytest.mark.parametrize("name", ["local", "ollama-llama3.1", "vllm-m", "sglang-m", "gpt-4o-mini", "o3", "ft:gpt-x"])
def test_valid_names_have_no_problem(name: str) -> None:
    assert engine_name_problem(name) is None


def test_other_names_are_accepted_when_an_openai_compatible_server_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.example:4000/v1")
    assert engine_name_problem("llama3") is None


def test_what_each_backend_can_do() -> None:
    can = {kind: (b.structured_output, b.prompt_logprobs, b.tokenizer) for kind, b in BACKENDS.items()}
    assert can == {
        "local": ("json_object_schema", "llama_cpp_echo", "vocab"),  # llama-cpp-python, counted in-process
        "ollama": ("json_schema", None, None),
        "vllm": ("json_schema", "echo", "server"),
        "sglang": ("json_schema", None, "server"),
        "openai": ("json_schema", None, "tiktoken"),
    }


def test_one_pooled_client_per_server_carries_the_chat_requests(monkeypatch: pytest.MonkeyPatch, runtime: Runtime,
                                                                  fake_server) -> None:
    http_client = runtime.http.client
    client = http_client(fake_server.base_url)
    assert http_client(fake_server.base_url.removesuffix("/v1") + "/props") is client  # same server, same pool
    assert http_client("http://127.0.0.1:8124/v1") is not client
    assert client.trust_env is False  # loopback: never through a proxy from the environment
    assert http_client("https://api.openai.com/v1").trust_env is True
    sent: list[str] = []
    client.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    assert get_engine("vllm-m").generate("hi") == "reply from m to: hi"
    assert sent[-1] == "/v1/chat/completions"  # the chat went through it, as the model lookup did
    assert "/v1/models" in sent
    assert Runtime().http.client(fake_server.base_url) is not client  # another runtime, its own clients


def test_the_grammar_loads_without_the_llm_client_libraries() -> None:
    # utils.config checks flags before anything slow is imported: a typo deserves an instant answer.
    code = ("import sys, utils.config; "
            "print(sorted(m for m in ('openai', 'httpx', 'textgrad.engine', 'llama_cpp') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
