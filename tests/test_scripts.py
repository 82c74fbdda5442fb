"""The shell launchers in scripts/: syntax, --help, the commands their --dry-run prints (parsed by
main.py's own argument parser), resume/skip, stopping on bad flags, and the llama.cpp server launcher
started for real."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from run_helpers import ServerProcess

from textgrad.engine import get_engine
from textgrad.serving.llama_process import N_CTX, find_packaged_model
from utils.config import parse_args
from utils.reporting.uid import uid_measures

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
LAUNCHERS = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
PAPER_TASKS = ["BBH_object_counting", "BBH_multistep_arithmetic_two", "GSM8K"]


def _run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTEXTGRAD_", "SEEDS", "METHODS", "GRID"))}
    full_env.update({"PYTHON": sys.executable, **(env or {})})
    return subprocess.run([str(SCRIPTS / script), *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def _main_commands(stdout: str) -> list[Any]:
    """The main.py commands of a dry run, parsed by main.py's own parser."""
    parsed = []
    for line in stdout.splitlines():
        words = shlex.split(line)
        if len(words) > 1 and words[1].endswith("main.py"):
            assert words[0] == sys.executable
            parsed.append(parse_args(words[2:]))
    return parsed


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_every_script_passes_bash_n(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_launcher_has_help_and_is_executable(script: str) -> None:
    assert os.access(SCRIPTS / script, os.X_OK)
    done = _run(script, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"Usage: scripts/{script}")
    assert "--dry-run" in done.stdout


def test_homo_script_runs_the_homogeneous_module_for_every_task(tmp_path: Path) -> None:
    done = _run("run_homo_fed.sh", "--dry-run", env={"SEEDS": "1 2", "FEDTEXTGRAD_OUTPUT_DIR": str(tmp_path)})
    runs = _main_commands(done.stdout)
    assert done.returncode == 0 and len(runs) == 12
    assert {a.module for a in runs} == {"train_homo_fed"}
    assert sorted((a.task[0], a.aggregate_method, a.seed) for a in runs) == sorted(
        (t, m, s) for t in PAPER_TASKS for m in ("summarization", "sum_uid") for s in (1, 2))
    assert {(a.homo_split_num, a.test_engine, a.evaluation_engine) for a in runs} == {(3, "local", "local")}
    assert {a.output_dir for a in runs} == {str(tmp_path / "homo_fed")}
    assert {str(Path(a.data_dir).resolve()) for a in runs} == {str((REPO_ROOT.parent / "shared" / "data").resolve())}
    # The last line tabulates the runs.
    report = shlex.split(done.stdout.splitlines()[-1])
    assert report[-5:] == ["-m", "utils.reporting.report", str(tmp_path / "homo_fed"), "--out",
                           str(tmp_path / "homo_fed" / "report")]


def test_hetero_and_centralized_scripts(tmp_path: Path) -> None:
    hetero = _main_commands(_run("run_hetero_fed.sh", "--dry-run", env={"METHODS": "concat sum_uid"}).stdout)
    assert [(a.module, a.task, a.aggregate_method) for a in hetero] == [
        ("train_hetero_fed", PAPER_TASKS, "concat"), ("train_hetero_fed", PAPER_TASKS, "sum_uid")]
    central = _main_commands(_run("run_centralized.sh", "--dry-run").stdout)
    assert [(a.module, a.task) for a in central] == [("train_centralized", [t]) for t in PAPER_TASKS]


@pytest.mark.parametrize(("script", "flag", "values", "methods"), [
    ("sweep_local_steps.sh", "max_steps", [1, 3, 5, 10], ["sum_uid"]),
    ("sweep_clients.sh", "homo_split_num", [2, 3, 5, 10], ["sum_uid"]),
    ("sweep_batch_size.sh", "batch_size", [1, 3, 5], ["summarization", "sum_uid"]),
    ("sweep_aggregation.sh", None, [None], ["concat", "summarization", "sum_uid"]),
])
def test_sweeps_cover_the_paper_grid_over_seeds(script: str, flag: str | None, values: list, methods: list) -> None:
    done = _run(script, "--dry-run", env={"SEEDS": "7 8"})
    runs = _main_commands(done.stdout)
    cells = sorted((a.task[0], a.aggregate_method, getattr(a, flag) if flag else None, a.seed) for a in runs)
    assert cells == sorted((t, m, v, s) for t in PAPER_TASKS for m in methods for v in values for s in (7, 8))
    assert {a.module for a in runs} == {"train_homo_fed"}
    assert len({a.run_name for a in runs}) == len(runs)  # one folder per cell
    assert {a.config for a in runs} == {str(REPO_ROOT / "configs" / "paper" / script.replace(".sh", ".yaml"))}


def test_environment_and_extra_flags_reach_every_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the runs' key, which parsing their commands here checks too
    env = {"FEDTEXTGRAD_TEST_ENGINE": "vllm-small", "FEDTEXTGRAD_EVAL_ENGINE": "gpt-4o",
           "FEDTEXTGRAD_DATA_DIR": str(tmp_path), "FEDTEXTGRAD_OUTPUT_DIR": "rel/out",
           "FEDTEXTGRAD_SPLIT_SIZES": "3,3,3", "FEDTEXTGRAD_ROUNDS": "1", "GRID": "1 2", "SETTING": "hetero",
           "HETERO_TASKS": "BBH_object_counting GSM8K", "OPENAI_API_KEY": "sk-test"}
    done = _run("sweep_batch_size.sh", "--dry-run", "--max_tokens", "32", "--batch_size", "4", env=env)
    runs = _main_commands(done.stdout)
    assert len(runs) == 4 and {a.module for a in runs} == {"train_hetero_fed"}
    for args in runs:
        assert (args.test_engine, args.evaluation_engine, args.data_dir) == ("vllm-small", "gpt-4o", str(tmp_path))
        assert args.split_sizes == (3, 3, 3) and args.max_epochs == 1 and args.max_tokens == 32
        assert args.task == ["BBH_object_counting", "GSM8K"]
        assert args.batch_size == 4  # flags given to the script win over the grid
        assert args.output_dir == str(REPO_ROOT / "rel" / "out" / "sweep_batch_size_hetero")


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path: Path) -> None:
    env = {"FEDTEXTGRAD_OUTPUT_DIR": str(tmp_path), "METHODS": "concat summarization", "TASKS": "BBH_object_counting"}
    group = tmp_path / "sweep_aggregation_homo"
    (group / "BBH_object_counting-concat-seed42").mkdir(parents=True)
    (group / "BBH_object_counting-concat-seed42" / "results.json").write_text("{}")
    (group / "BBH_object_counting-summarization-seed42").mkdir()
    (group / "BBH_object_counting-summarization-seed42" / "checkpoint.json").write_text("{}")
    done = _run("sweep_aggregation.sh", "--dry-run", env=env)
    assert "# done already, skipped:" in done.stdout and "concat-seed42" in done.stdout
    lines = [line for line in done.stdout.splitlines() if "main.py" in line]
    assert len(lines) == 1 and "--run_name BBH_object_counting-summarization-seed42" in lines[0]
    assert lines[0].endswith("--resume")


def test_bad_flags_stop_the_sweep_at_the_first_run(tmp_path: Path) -> None:
    done = _run("sweep_local_steps.sh", "--batch_size", "0", env={"FEDTEXTGRAD_OUTPUT_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.count("+ ") == 1 and "--batch_size" in done.stderr and "stopped:" in done.stderr
    assert not (tmp_path / "sweep_local_steps_homo").exists()


def test_sweep_clients_refuses_the_hetero_setting() -> None:
    done = _run("sweep_clients.sh", "--dry-run", env={"SETTING": "hetero"})
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


@pytest.mark.parametrize(("script", "url_var", "port", "engine", "command"), [
    ("vllm_serve.sh", "VLLM_BASE_URL", 8000, "vllm-meta-llama/Llama-3.1-8B-Instruct", "vllm serve"),
    ("sglang_serve.sh", "SGLANG_BASE_URL", 30000, "sglang-meta-llama/Llama-3.1-8B-Instruct", "sglang.launch_server"),
    ("ollama_serve.sh", "OLLAMA_BASE_URL", 11434, "ollama-llama3.1:8b", "ollama serve"),
    ("llamacpp_serve.sh", "LOCAL_BASE_URL", 8080, "local", "textgrad.serving.llamacpp_server"),
])
def test_server_launchers_print_what_to_export(script: str, url_var: str, port: int, engine: str,
                                               command: str) -> None:
    done = _run(script, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"export {url_var}=http://127.0.0.1:{port}/v1" in done.stdout
    assert f"export FEDTEXTGRAD_TEST_ENGINE={engine} FEDTEXTGRAD_EVAL_ENGINE={engine}" in done.stdout
    assert command in done.stdout
    parse_args(["--module", "train_centralized", "--test_engine", engine])  # a valid engine name


def test_llamacpp_launcher_serves_the_packaged_model_under_its_stem() -> None:
    done = _run("llamacpp_serve.sh", "--dry-run", "--n_batch", "256", env={"LLAMACPP_PORT": "9123"})
    words = shlex.split(done.stdout.splitlines()[-1])
    model = find_packaged_model()
    assert words[words.index("--model") + 1] == model
    assert words[words.index("--model_alias") + 1] == Path(model).stem
    assert words[words.index("--port") + 1] == "9123" and words[-2:] == ["--n_batch", "256"]


def test_llamacpp_launcher_starts_a_pool_on_consecutive_ports_and_lists_them() -> None:
    done = _run("llamacpp_serve.sh", "--dry-run", env={"LLAMACPP_PORT": "9123", "LLAMACPP_SERVERS": "2"})
    assert done.returncode == 0, done.stderr
    assert "export LOCAL_BASE_URL=http://127.0.0.1:9123/v1,http://127.0.0.1:9124/v1" in done.stdout
    commands = [shlex.split(line) for line in done.stdout.splitlines() if "llamacpp_server" in line]
    assert [words[words.index("--port") + 1] for words in commands] == ["9123", "9124"]
    cores = os.cpu_count() or 2
    assert {words[words.index("--n_threads") + 1] for words in commands} == {str(max(1, cores // 2))}
    assert {words[words.index("--n_threads_batch") + 1] for words in commands} == {str(max(1, cores // 2))}
    for bad in ("0", "x", "17"):
        done = _run("llamacpp_serve.sh", "--dry-run", env={"LLAMACPP_SERVERS": bad})
        assert done.returncode == 2 and done.stderr.startswith(f"error: LLAMACPP_SERVERS={bad} ")
        assert done.stderr.count("\n") == 1


def test_vllm_launcher_without_vllm_says_how_to_install() -> None:
    assert shutil.which("vllm", path="/usr/bin:/bin") is None
    done = _run("vllm_serve.sh", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "pip install vllm" in done.stderr and done.stderr.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # starts llama.cpp through the launcher
def test_llamacpp_launcher_starts_a_server_the_local_engine_shares(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_BASE_URL"}
    log = tmp_path / "server.log"
    server = subprocess.Popen([str(SCRIPTS / "llamacpp_serve.sh")], env={**env, "LLAMACPP_PORT": str(port),
                              "PYTHON": sys.executable, "LLAMACPP_LOG": str(log)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        exports = [server.stdout.readline().strip() for _ in range(4)]
        assert exports[1] == f"export LOCAL_BASE_URL=http://127.0.0.1:{port}/v1"
        assert exports[3] == f"# server log: {log}"
        url = exports[1].split("=", 1)[1]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, "the server exited during start-up"
            try:
                with opener.open(f"{url}/models", timeout=2) as response:
                    models = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer within 180 s"
                time.sleep(0.5)
        assert models["data"][0]["id"] == Path(find_packaged_model()).stem

        monkeypatch.setenv("LOCAL_BASE_URL", url)
        engine = get_engine("local")
        assert isinstance(engine.generate("Say hi.", max_tokens=8), str)
        assert engine.base_url == url
        measures = uid_measures("Count the objects, then add them.", engine)
        assert measures is not None and measures["tokens"] >= 5
        # One model, one window: the embedded server's 8192 tokens, reported by the server (/props).
        assert (engine.context_window, engine.context.source) == (N_CTX, "reported by the server")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the script exec'd the server: its own session
        server.wait(timeout=30)
    # The server's own lines went to its log file, not to the terminal.
    assert "Uvicorn running" in log.read_text() or "llama" in log.read_text().lower()
    assert server.stdout.read() == "" and "Uvicorn" not in server.stderr.read()


def test_launchers_wait_until_the_server_answers(tmp_path: Path) -> None:
    """docs/experiments.md's `server &` then a sweep: the sweep waits for the server instead of failing."""
    port = _free_port()
    env = {"FEDTEXTGRAD_OUTPUT_DIR": str(tmp_path), "FEDTEXTGRAD_TEST_ENGINE": "vllm-fake-model",
           "FEDTEXTGRAD_EVAL_ENGINE": "vllm-fake-model", "VLLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
           "FEDTEXTGRAD_SPLIT_SIZES": "3,3,3", "FEDTEXTGRAD_ROUNDS": "1", "GRID": "1", "TASKS": "synthetic_object_counting",
           "HF_HUB_OFFLINE": "1"}
    starter = threading.Timer(3.0, lambda: started.append(ServerProcess("--latency", "0").start(port)))
    started: list[ServerProcess] = []
    starter.start()
    try:
        done = _run("sweep_local_steps.sh", "--comet_mode", "disabled", "--cache_dir", str(tmp_path / "cache"),
                    env=env, timeout=300)
    finally:
        starter.join()
        for server in started:
            server.kill()
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"waiting for the LLM server at http://127.0.0.1:{port}/v1 to answer" in done.stderr
    assert (tmp_path / "sweep_local_steps_homo" / "synthetic_object_counting-sum_uid-max_steps1-seed42" /
            "results.json").is_file()


def test_launchers_give_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    env = {"FEDTEXTGRAD_OUTPUT_DIR": str(tmp_path), "LOCAL_BASE_URL": f"http://127.0.0.1:{_free_port()}/v1",
           "FEDTEXTGRAD_SERVER_WAIT": "2"}
    done = _run("run_centralized.sh", env=env)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("error: no LLM server answers at")
    assert not (tmp_path / "centralized").exists()


def test_readme_blocks_stop_what_they_start() -> None:
    """A block of README or docs/ that starts a background process (`... &`) also stops it (`kill ...`)."""
    blocks, block = [], []
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for line in [*page.read_text().splitlines(), "end of page"]:
            if line.startswith("    ") and line.strip():
                block.append(line.strip())
            elif block and line.strip():
                blocks.append(block)
                block = []
    starting = [b for b in blocks if any(re.search(r"&(\s*#.*)?$", line) for line in b)]
    assert len(starting) >= 6, "README and docs/ start servers in the background in several places"
    for b in starting:
        assert any(line.startswith("kill ") for line in b), b
