"""Engine routing, cache, retries, concurrency cap and failure messages, against a fake server."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from pathlib import Path

import pytest

from textgrad.engine import get_engine
from textgrad.errors import EngineError
from textgrad.parallel import run_concurrently
from textgrad.serving import transport
from textgrad.serving.cache import ResponseCache
from textgrad.serving.runtime import Runtime

ENDPOINT_VARS = ("LOCAL_BASE_URL", "OLLAMA_BASE_URL", "VLLM_BASE_URL", "SGLANG_BASE_URL", "OPENAI_BASE_URL",
                 "OLLAMA_API_KEY", "VLLM_API_KEY", "SGLANG_API_KEY", "OPENAI_API_KEY")


@pytest.fixture(autouse=True)
def _clean_endpoint_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("name", "env_var", "model", "default_url"),
    [
        ("ollama-llama3.1:8b", "OLLAMA_BASE_URL", "llama3.1:8b", "http://localhost:11434/v1"),
        ("vllm-meta-llama/Llama-3.1-8B", "VLLM_BASE_URL", "meta-llama/Llama-3.1-8B", "http://localhost:8000/v1"),
        ("sglang-Qwen/Qwen2.5-7B-Instruct", "SGLANG_BASE_URL", "Qwen/Qwen2.5-7B-Instruct",
         "http://localhost:30000/v1"),
    ],
)
def test_prefix_routing_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
                                        env_var: str, model: str, default_url: str) -> None:
    engine = get_engine(name)
    assert (engine.env_var, engine.model, engine.base_url) == (env_var, model, default_url)

    monkeypatch.setenv(env_var, "http://gpu-box:9999/v1/")
    other = get_engine(name, cache_dir=str(tmp_path / "other"))
    assert other.base_url == "http://gpu-box:9999/v1"
    assert other.model == model


def test_openai_routing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-routing")
    engine = get_engine("gpt-4o")
    assert (engine.env_var, engine.model, engine.base_url) == ("OPENAI_BASE_URL", "gpt-4o",
                                                               "https://api.openai.com/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.example:4000/v1")
    assert get_engine("gpt-4o", cache_dir=str(tmp_path / "x")).base_url == "http://proxy.example:4000/v1"


def test_missing_openai_key_is_one_clear_line() -> None:
    with pytest.raises(EngineError) as info:
        get_engine("gpt-4o-mini")
    message = str(info.value)
    # the engine, the variable to set, and the other way: a server of one's own at OPENAI_BASE_URL
    assert "engine 'gpt-4o-mini'" in message and "needs OPENAI_API_KEY, which is not set" in message
    assert "export OPENAI_API_KEY=" in message and "set OPENAI_BASE_URL" in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["vllm-", "ollama-", "sglang-  ", ""])
def test_empty_model_is_rejected(name: str) -> None:
    with pytest.raises(EngineError):
        get_engine(name)


def test_local_base_url_uses_running_server_and_its_model(monkeypatch: pytest.MonkeyPatch,
                                                          make_fake_server) -> None:
    server = make_fake_server(models=("served-model", "another"))
    monkeypatch.setenv("LOCAL_BASE_URL", server.base_url)
    engine = get_engine("local")
    assert engine.env_var == "LOCAL_BASE_URL"
    assert engine.base_url == server.base_url
    assert engine.model == "served-model"
    assert engine.generate("hi") == "reply from served-model to: hi"


def test_engines_are_memoised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = get_engine("vllm-m")
    assert get_engine("vllm-m") is first
    assert get_engine("vllm-m", use_cache=False) is not first
    assert get_engine("vllm-m", cache_dir=str(tmp_path / "elsewhere")) is not first
    assert get_engine("vllm-m", use_cache=False).cache is None


def test_configure_sets_defaults(tmp_path: Path, runtime: Runtime) -> None:
    runtime.configure(use_cache=False)
    assert get_engine("vllm-nocache").cache is None
    runtime.configure(use_cache=True, cache_dir=str(tmp_path / "configured"))
    engine = get_engine("vllm-withcache")
    assert engine.cache is not None and engine.cache.directory == (tmp_path / "configured").resolve()
    with pytest.raises(ValueError):
        runtime.configure(max_concurrency=0)


# ---------------------------------------------------------------- cache


def test_cache_hit_and_misses(monkeypatch: pytest.MonkeyPatch, fake_server, isolated_cache_dir,
                              runtime: Runtime) -> None:
    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    engine = get_engine("vllm-model-a")

    first = engine.generate("What is 2+2?", system_prompt="Be brief.")
    again = engine.generate("What is 2+2?", system_prompt="Be brief.")
    assert first == again == "reply from model-a to: What is 2+2?"
    assert fake_server.chat_count == 1
    stats = engine.stats.as_dict()
    assert stats["cache_hits"] == 1 and stats["cache_misses"] == 1 and stats["calls"] == 1
    assert stats["prompt_tokens"] == 11 and stats["completion_tokens"] == 7

    engine.generate("What is 2+2?", system_prompt="Be brief.", temperature=0.7)
    assert fake_server.chat_count == 2  # a different temperature is a different request
    engine.generate("What is 2+2?", system_prompt="Be brief.", max_tokens=64)
    assert fake_server.chat_count == 3
    get_engine("vllm-model-b").generate("What is 2+2?", system_prompt="Be brief.")
    assert fake_server.chat_count == 4  # same cache dir, different model
    assert fake_server.chat_requests[-1]["model"] == "model-b"
    assert fake_server.chat_requests[0]["temperature"] == 0.0

    # The entries are on disk where the runtime's settings pointed, and survive a fresh runtime's engine.
    assert len(list(isolated_cache_dir.rglob("*.json"))) == 4
    fresh = get_engine("vllm-model-a", runtime=Runtime(runtime.settings))
    assert fresh is not engine
    assert fresh.generate("What is 2+2?", system_prompt="Be brief.") == first
    assert fake_server.chat_count == 4
    assert fresh.stats.cache_hits == 1 and fresh.stats.calls == 0


def test_cache_never_answers_for_another_server(monkeypatch: pytest.MonkeyPatch, make_fake_server,
                                               runtime: Runtime) -> None:
    # One model name on two servers (an OpenAI-compatible proxy and a vLLM box, say) may be two models:
    # a reply cached from the first must not be served as the second's.
    first, second = make_fake_server(), make_fake_server()
    monkeypatch.setenv("VLLM_BASE_URL", first.base_url)
    get_engine("vllm-shared").generate("Same question?")
    monkeypatch.setenv("VLLM_BASE_URL", second.base_url)
    engine = get_engine("vllm-shared", runtime=Runtime(runtime.settings))  # a later run, same cache directory
    engine.generate("Same question?")
    assert (first.chat_count, second.chat_count) == (1, 1)
    assert engine.stats.cache_hits == 0


def test_no_cache_always_calls(monkeypatch: pytest.MonkeyPatch, fake_server, runtime: Runtime) -> None:
    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    engine = get_engine("vllm-m", use_cache=False)
    engine.generate("same")
    engine.generate("same")
    assert fake_server.chat_count == 2
    assert engine.stats.calls == 2 and engine.stats.cache_hits == 0
    assert runtime.engine_stats()["vllm-m"]["calls"] >= 2


def test_default_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime: Runtime) -> None:
    runtime.configure(cache_dir=None)
    monkeypatch.setenv("FEDTEXTGRAD_CACHE_DIR", str(tmp_path / "from-env"))
    assert runtime.settings.cache_directory() == str((tmp_path / "from-env").resolve())
    monkeypatch.delenv("FEDTEXTGRAD_CACHE_DIR")
    assert runtime.settings.cache_directory() == str((Path.home() / ".cache" / "fedtextgrad").resolve())


def test_none_content_and_missing_usage(monkeypatch: pytest.MonkeyPatch, fake_server) -> None:
    monkeypatch.setenv("SGLANG_BASE_URL", fake_server.base_url)
    engine = get_engine("sglang-m")
    assert engine.chat([{"role": "system", "content": None}, {"role": "user", "content": "__null__"}]) == ""
    assert fake_server.chat_requests[0]["messages"][0]["content"] == ""
    before = engine.stats.as_dict()
    reply = engine.generate("__nousage__")
    after = engine.stats.as_dict()
    assert after["completion_tokens"] - before["completion_tokens"] == len(reply) // 4
    assert after["prompt_tokens"] - before["prompt_tokens"] == len("__nousage__") // 4


def test_api_key_never_leaks(monkeypatch: pytest.MonkeyPatch, make_fake_server, isolated_cache_dir,
                             runtime: Runtime) -> None:
    secret = "sk-very-secret-key-1234567890"
    server = make_fake_server()
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    engine = get_engine("gpt-4o")
    engine.generate("hello")
    assert server.auth_headers[0] == f"Bearer {secret}"  # it was sent...
    files = list(isolated_cache_dir.rglob("*"))
    assert any(f.suffix == ".json" for f in files)
    for path in files:  # ...but never stored
        if path.is_file():
            assert secret not in path.read_text(encoding="utf-8")
    assert secret not in repr(engine) and secret not in str(runtime.engine_stats())

    server.fail_with = [401]  # the server echoes the key back in its error
    with pytest.raises(EngineError) as info:
        engine.generate("another prompt")
    message = str(info.value)
    assert secret not in message and "***" in message
    assert "OPENAI_API_KEY" in message and "\n" not in message


# ---------------------------------------------------------------- retries and failures


def test_retries_on_500_and_429_then_succeeds(monkeypatch: pytest.MonkeyPatch, make_fake_server) -> None:
    server = make_fake_server(fail_with=[500, 429, 503])
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    engine = get_engine("vllm-m")
    started = time.monotonic()
    assert engine.generate("retry me") == "reply from m to: retry me"
    assert time.monotonic() - started >= 0.5 + 1.0 + 2.0 - 0.1  # backoff doubled each time
    stats = engine.stats.as_dict()
    assert stats["retries"] == 3 and stats["calls"] == 1 and stats["failures"] == 0
    assert server.chat_count == 4


def test_client_error_is_not_retried(monkeypatch: pytest.MonkeyPatch, make_fake_server) -> None:
    server = make_fake_server(fail_with=[400])
    monkeypatch.setenv("OLLAMA_BASE_URL", server.base_url)
    engine = get_engine("ollama-m")
    with pytest.raises(EngineError) as info:
        engine.generate("bad request")
    assert "HTTP 400" in str(info.value) and "injected failure 400" in str(info.value)
    assert server.chat_count == 1
    assert engine.stats.failures == 1 and engine.stats.retries == 0


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch, make_fake_server) -> None:
    monkeypatch.setattr(transport, "BACKOFF_BASE_S", 0.01)
    server = make_fake_server(fail_with=[502] * 20)
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    engine = get_engine("vllm-m")
    with pytest.raises(EngineError, match="HTTP 502"):
        engine.generate("never works")
    assert server.chat_count == transport.MAX_ATTEMPTS
    assert engine.stats.retries == transport.MAX_ATTEMPTS - 1 and engine.stats.failures == 1


def test_down_endpoint_fails_fast_with_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _closed_port_url()
    monkeypatch.setenv("VLLM_BASE_URL", url)
    engine = get_engine("vllm-meta-llama/Llama-3.1-8B")

    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        engine.check_available()
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert url in message and "VLLM_BASE_URL" in message and "\n" not in message

    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        engine.generate("anyone there?")
    assert time.monotonic() - started < 30
    assert url in str(info.value) and "VLLM_BASE_URL" in str(info.value)
    assert engine.stats.retries >= 1 and engine.stats.failures == 1


def test_check_available_passes_on_live_server(monkeypatch: pytest.MonkeyPatch, fake_server) -> None:
    monkeypatch.setenv("OLLAMA_BASE_URL", fake_server.base_url)
    get_engine("ollama-m").check_available()


# ---------------------------------------------------------------- concurrency


def test_per_endpoint_concurrency_cap(monkeypatch: pytest.MonkeyPatch, make_fake_server) -> None:
    server = make_fake_server(latency=0.2)
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    # Two engines on one URL share the cap.
    first = get_engine("vllm-a", max_concurrency=3)
    second = get_engine("vllm-b", max_concurrency=3)
    calls = [lambda i=i: (first if i % 2 else second).generate(f"question {i}") for i in range(10)]
    started = time.monotonic()
    replies = run_concurrently(calls)
    elapsed = time.monotonic() - started
    assert [r.rsplit(": ", 1)[1] for r in replies] == [f"question {i}" for i in range(10)]
    assert server.peak_in_flight == 3
    assert elapsed >= 4 * 0.2 - 0.05  # ceil(10 / 3) waves of 0.2 s


def test_cache_hits_do_not_wait_for_the_semaphore(monkeypatch: pytest.MonkeyPatch, make_fake_server) -> None:
    server = make_fake_server(latency=1.0)
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    engine = get_engine("vllm-m", max_concurrency=1)
    engine.generate("cached")
    worker = threading.Thread(target=engine.generate, args=("slow",))
    worker.start()
    time.sleep(0.2)  # the slow call now holds the only slot
    started = time.monotonic()
    assert engine.generate("cached").endswith("cached")
    assert time.monotonic() - started < 0.5
    worker.join()


# ---------------------------------------------------------------- run_concurrently


def test_run_concurrently_order_errors_and_nesting() -> None:
    assert run_concurrently([]) == []
    assert run_concurrently([lambda: 7]) == [7]
    assert run_concurrently([lambda i=i: (time.sleep(0.05 * (5 - i)), i)[1] for i in range(5)]) == list(range(5))

    finished: list[int] = []

    def slow_ok() -> int:
        time.sleep(0.2)
        finished.append(1)
        return 1

    def fail(message: str) -> int:
        raise ValueError(message)

    with pytest.raises(ValueError, match="first"):
        run_concurrently([slow_ok, lambda: fail("first"), lambda: fail("second")])
    assert finished == [1]  # the slow call was allowed to finish before raising

    # Inner calls run while outer threads wait on them: must not deadlock.
    nested = run_concurrently([lambda j=j: run_concurrently([lambda k=k: j * 10 + k for k in range(3)])
                               for j in range(4)])
    assert nested == [[j * 10 + k for k in range(3)] for j in range(4)]


# ---------------------------------------------------------------- ResponseCache


def test_make_key_is_canonical_and_sensitive() -> None:
    messages = [{"role": "user", "content": "hi"}]
    url = "http://a:1/v1"
    key = ResponseCache.make_key("m", messages, {"temperature": 0.0, "max_tokens": 5}, endpoint=url)
    assert key == ResponseCache.make_key("m", [{"content": "hi", "role": "user"}],
                                         {"max_tokens": 5, "temperature": 0.0}, endpoint=url)
    assert len(key) == 64
    assert key != ResponseCache.make_key("m2", messages, {"temperature": 0.0, "max_tokens": 5}, endpoint=url)
    assert key != ResponseCache.make_key("m", messages, {"temperature": 0.5, "max_tokens": 5}, endpoint=url)
    assert key != ResponseCache.make_key("m", messages, {"temperature": 0.0, "max_tokens": 5},
                                         endpoint="http://b:1/v1")


def test_corrupt_entry_reads_as_miss(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = ResponseCache.make_key("m", [], {}, endpoint="e")
    cache.put(key, {"text": "ok"})
    assert cache.get(key) == {"text": "ok"}
    path = tmp_path / key[:2] / f"{key}.json"
    path.write_text('{"text": "trunc', encoding="utf-8")
    assert cache.get(key) is None
    path.write_text("[1, 2]", encoding="utf-8")
    assert cache.get(key) is None
    assert cache.get("0" * 64) is None


def _write_entries(directory: str, worker: int, count: int) -> None:
    cache = ResponseCache(directory)
    for i in range(count):
        # Half the keys are shared, so both processes race on the same files.
        shared = i % 2 == 0
        key = ResponseCache.make_key("m", [{"role": "user", "content": str(i if shared else (worker, i))}], {},
                                     endpoint="e")
        cache.put(key, {"text": "x" * 2000, "i": i, "worker": worker})


def test_two_processes_share_a_cache_without_losing_entries(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    count = 200
    processes = [context.Process(target=_write_entries, args=(str(tmp_path), w, count)) for w in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0

    cache = ResponseCache(tmp_path)
    expected = set()
    for worker in range(2):
        for i in range(count):
            content = str(i if i % 2 == 0 else (worker, i))
            expected.add(ResponseCache.make_key("m", [{"role": "user", "content": content}], {}, endpoint="e"))
    assert len(expected) == 300  # 100 shared keys + 100 private keys per process
    for key in expected:
        value = cache.get(key)
        assert value is not None and value["text"] == "x" * 2000
    assert len(list(tmp_path.rglob("*.json"))) == len(expected)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind
