"""scripts/flower_simulation.sh, docs/flower.md's launcher of a local simulation: a bad run config stops it
before anything starts; its exit code is the run's; a run that fails ends with its one-line reason and no
traceback; and whether it ends by itself or by `scripts/flower_simulation.sh stop`, nothing it started is
left: no SuperLink, SuperExec, simulation or Ray process, no Ray session folder."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.fake_server import FakeServer
from fedtextgrad_flower.server_app import RunFailed

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "scripts" / "flower_simulation.sh"
FLOWER_PROCESSES = ("flower-superlink", "flower-superexec", "flwr-simulation", "raylet", "gcs_server", "ray::")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launcher_env(tmp_path: Path, llm_url: str) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_PORT": str(free_port()),
            "FEDTEXTGRAD_ALLOWED_DIRS": str(tmp_path), "VLLM_BASE_URL": llm_url, "PYTHON": sys.executable,
            "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])}


def run_config(tmp_path: Path, **extra: Any) -> str:
    flags = {"test_engine": "'vllm-fake-model'", "evaluation_engine": "'vllm-fake-model'", "comet_mode": "'disabled'",
             "output_dir": f"'{tmp_path / 'out'}'", "cache_dir": f"'{tmp_path / 'cache'}'", "run_name": "'sim'",
             **extra}
    return " ".join(f"{k}={v}" for k, v in flags.items())


def flower_processes_of(env: dict[str, str]) -> list[psutil.Process]:
    """Live processes of this launcher's Flower (by its port or its FLWR_HOME), Ray included."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(proc.info["cmdline"] or [])
            if any(name in command for name in FLOWER_PROCESSES) and (
                    env["FLWR_PORT"] in command or (proc.info["environ"] or {}).get("FLWR_HOME") == env["FLWR_HOME"]):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def ray_folders() -> set[str]:
    return {p.name for p in Path("/tmp").glob("ftg-ray-*")}


def assert_nothing_left(env: dict[str, str], ray_before: set[str]) -> None:
    deadline = time.monotonic() + 15
    while (left := flower_processes_of(env)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for proc in left:  # ours by their port and FLWR_HOME
        proc.kill()
    assert not left, [" ".join(p.cmdline())[:100] for p in left]
    assert ray_folders() <= ray_before


def test_runfailed_is_logged_as_its_one_line_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def deep() -> None:
        raise RunFailed("error: --max_epochs 0 ...") from None

    try:
        deep()
    except RunFailed as exc:  # as Flower reports the exception that ended a run
        logging.getLogger("flwr-like").error("ServerApp raised an exception", exc_info=exc)
    assert caplog.text.strip().endswith("RunFailed: error: --max_epochs 0 ...")
    assert "Traceback" not in caplog.text


def test_a_bad_run_config_stops_the_launcher_before_anything_starts(tmp_path: Path) -> None:
    env = launcher_env(tmp_path, "http://127.0.0.1:9/v1")
    done = subprocess.run([str(LAUNCHER), "--run-config", run_config(tmp_path, max_epochs=0)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "error: argument --rounds/--max_epochs: must be 1 or more, got 0 (see python main.py --help)"]
    assert not (tmp_path / "flwr-home").exists()  # no SuperLink, no state


@pytest.mark.slow  # a SuperLink, a simulation and Ray, three times
def test_the_launcher_exits_as_the_run_and_leaves_nothing_running(tmp_path: Path) -> None:
    ray_before = ray_folders()
    with FakeServer(latency=0.2) as llm:
        env = launcher_env(tmp_path, llm.base_url)
        tiny = run_config(tmp_path, max_epochs=2, max_steps=1, batch_size=1, split_sizes="'3,3,3'")
        done = subprocess.run([str(LAUNCHER), "--federation-config", "num-supernodes=3", "--run-config", tiny],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert (tmp_path / "out" / "sim" / "results.json").is_file()
        assert_nothing_left(env, ray_before)

        # A run the ServerApp refuses (its endpoint is down): exit 1, the reason as the last line, no traceback.
        down = run_config(tmp_path, run_name="'down'", evaluation_engine="'sglang-down-model'")
        failed = subprocess.run([str(LAUNCHER), "--federation-config", "num-supernodes=3", "--run-config", down],
                                cwd=ROOT, env={**env, "SGLANG_BASE_URL": "http://127.0.0.1:9/v1"},
                                capture_output=True, text=True, timeout=600)
        output = failed.stdout + failed.stderr
        assert failed.returncode == 1, output[-3000:]
        assert failed.stderr.strip().splitlines()[-1].startswith("error: Flower run ") and \
            "cannot reach the sglang endpoint" in failed.stderr.strip().splitlines()[-1]
        assert "Traceback" not in output
        assert_nothing_left(env, ray_before)

        # A long run stopped by the one command, from elsewhere.
        long = run_config(tmp_path, run_name="'long'", max_epochs=50, split_sizes="'3,3,3'")
        launcher = subprocess.Popen([str(LAUNCHER), "--federation-config", "num-supernodes=3", "--run-config", long],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (tmp_path / "out" / "long" / "checkpoint.json").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()
            time.sleep(0.5)
        assert any("ray::" in " ".join(p.cmdline()) for p in flower_processes_of(env))  # Ray is running
        stop = subprocess.run([str(LAUNCHER), "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert launcher.wait(timeout=60) == 1
        assert_nothing_left(env, ray_before)


@pytest.mark.slow
def test_ctrl_c_stops_the_launcher_and_everything_it_started(tmp_path: Path) -> None:
    ray_before = ray_folders()
    with FakeServer(latency=0.2) as llm:
        env = launcher_env(tmp_path, llm.base_url)
        long = run_config(tmp_path, run_name="'ctrl_c'", max_epochs=50, split_sizes="'3,3,3'")
        launcher = subprocess.Popen([str(LAUNCHER), "--federation-config", "num-supernodes=3", "--run-config", long],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)  # its own terminal's process group, as in a shell
        deadline = time.monotonic() + 300
        while not (tmp_path / "out" / "ctrl_c" / "checkpoint.json").exists():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground group
        assert launcher.wait(timeout=60) == 130
        assert_nothing_left(env, ray_before)
