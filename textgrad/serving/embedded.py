"""The embedded default engine's servers: a pool of llama.cpp servers (textgrad.serving.llama_process)
that a runtime starts on first use.

`EmbeddedPool.ensure` starts pool_size() servers, each on a free loopback port with its share of the
cores, in parallel; requests go to the least busy of them (its `pool`); a server that dies is restarted
once, in the background (never while the process is stopping: a request its stop breaks is no death);
all are stopped by stop(), at interpreter exit, on Ctrl-C, SIGTERM and SIGHUP. Their logs are removed
when they stop, unless a failure named them (keep_logs).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from ..errors import EngineError
from . import llama_process
from .http import HttpClients
from .interrupt import STOP_SIGNALS, StopFlag
from .llama_process import ServerProcess, last_log_line, terminate
from .server_pool import CONNECTION_ERRORS, Pool

logger = logging.getLogger(__name__)

SIGNAL_STOP_GRACE_S = 0.5


class EmbeddedPool:
    """The embedded llama.cpp servers of one runtime. `http` reaches them; `stop` is set on a stop signal
    before the servers are stopped, so the calls their end breaks neither retry nor blame them."""

    def __init__(self, http: HttpClients, stop: StopFlag, log_dir: str | None = None) -> None:
        self._http = http
        self._stop = stop
        self._log_dir = log_dir  # where the servers log (default: the temporary folder)
        # An RLock because the signal handler may run in the main thread while that same
        # thread is inside ensure().
        self._lock = threading.RLock()
        self._servers: list[ServerProcess] = []
        self.pool: Pool | None = None
        # The URL engines hold for the pool: its first server's when it started, kept if that one is
        # restarted on another port (the pool then sends its requests to the new one).
        self.pool_url: str | None = None
        self.restarts = 0  # servers that died and were restarted
        # The processes being started, so a Ctrl-C during the (slow) start-up still kills them.
        self._starting: list[subprocess.Popen[bytes]] = []
        # Logs of servers still running or stopped by us, removed when they stop unless keep_logs() was
        # called. A start-up failure's log and a dead server's log are never in here: errors name them.
        self._logs: list[str] = []
        self._keep_logs = False
        self._previous_handlers: dict[int, object] = {}
        self._restart_queue: queue.Queue[int] | None = None
        self._atexit_registered = False

    # -- starting ----------------------------------------------------------------------------

    def ensure(self, size: int | None = None) -> str:
        """Start the pool once (pool_size(size) servers) and return the URL engines use for it."""
        with self._lock:
            if self._servers and self.pool_url and any(s.running() or not s.restarted for s in self._servers):
                return self.pool_url  # deaths are handled by the pool (_on_request_failure)
            if self._servers:
                logger.warning("every embedded llama.cpp server exited (last: %s); starting new ones",
                               last_log_line(self._servers[0].log_path))
                self._drop()
            model_path = llama_process.find_packaged_model()
            count = llama_process.pool_size(size)
            self.install_signal_handlers()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            self._servers.extend(self._start(model_path, count))
            self.pool = Pool([s.base_url for s in self._servers], on_failure=self._on_request_failure)
            self.pool_url = self._servers[0].base_url
            return self.pool_url

    def _start(self, model_path: str, size: int) -> list[ServerProcess]:
        llama_process.require_llama_cpp()
        threads = max(1, llama_process.thread_count() // size)
        in_main_thread = threading.current_thread() is threading.main_thread()
        # All processes first, then one wait for all of them: they load the model in parallel.
        servers: list[ServerProcess] = []
        try:
            for _ in range(size):
                servers.append(llama_process.spawn(model_path, llama_process.free_port(), threads,
                                                   die_with_parent=in_main_thread, log_dir=self._log_dir))
                self._starting.append(servers[-1].process)
        except BaseException:
            self._discard(servers)
            raise
        self._wait_ready(servers)
        return servers

    def _wait_ready(self, servers: list[ServerProcess]) -> None:
        started_at = time.monotonic()
        try:
            llama_process.wait_ready(servers, self._http)
        except BaseException as exc:
            self._discard(servers, str(exc) if isinstance(exc, EngineError) else "")
            raise
        finally:
            for server in servers:
                if server.process in self._starting:
                    self._starting.remove(server.process)
        self._logs.extend(server.log_path for server in servers)
        logger.info("%d embedded llama.cpp server(s) ready at %s in %.1f s", len(servers),
                    ", ".join(s.base_url for s in servers), time.monotonic() - started_at)

    def _discard(self, servers: list[ServerProcess], error_line: str = "") -> None:
        """Stop servers that never became ready; keep only a log that error_line names."""
        for server in servers:
            terminate(server.process)
            if server.log_path not in error_line:
                Path(server.log_path).unlink(missing_ok=True)
            if server.process in self._starting:
                self._starting.remove(server.process)

    # -- deaths and restarts -----------------------------------------------------------------

    def _on_request_failure(self, index: int, exc: BaseException) -> float:
        """A request to server `index` failed: if its process died, avoid it and restart it once, in the
        background; the request is retried (by the engine) on the others meanwhile."""
        if self._stop.is_set():  # the process is stopping: the servers' end broke the request, not a death
            return 0.0
        with self._lock:
            if index >= len(self._servers):
                return 0.0
            server = self._servers[index]
        if isinstance(exc, CONNECTION_ERRORS):
            # The kernel closes a dying process's sockets a moment before its exit status can be read.
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=1.0)
        with self._lock:
            if server.running() or self._servers[index] is not server or self._stop.is_set():
                return 0.0
            if server.dead:  # another in-flight call already reported this death
                return float("inf")
            server.dead = True
            if server.restarted:
                logger.warning("embedded llama.cpp server %s died again (code %s); not restarted twice "
                               "(log kept: %s)", server.base_url, server.process.returncode, server.log_path)
                self._forget_log(server.log_path)
                return float("inf")
            server.restarted = True
        logger.warning("embedded llama.cpp server %s died (code %s: %s); restarting it (log kept: %s)",
                       server.base_url, server.process.returncode, last_log_line(server.log_path), server.log_path)
        self._forget_log(server.log_path)
        self._restarts_pending().put(index)
        return float("inf")

    def _restarts_pending(self) -> queue.Queue[int]:
        with self._lock:
            if self._restart_queue is None:
                self._restart_queue = queue.Queue()
                # One thread for the pool's life, so the servers it forks may use the parent-death signal.
                threading.Thread(target=self._restarter, args=(self._restart_queue,), name="llama-restarter",
                                 daemon=True).start()
            return self._restart_queue

    def _restarter(self, pending: queue.Queue[int]) -> None:
        while True:
            self._restart(pending.get())

    def _restart(self, index: int) -> None:
        with self._lock:
            if index >= len(self._servers) or self._stop.is_set():
                return
            dead = self._servers[index]
        # The same port if it is free, so the pool's URL (held by engines) stays valid when the first one died.
        port = dead.port if llama_process.port_is_free(dead.port) else llama_process.free_port()
        try:
            server = llama_process.spawn(dead.model_path, port, dead.threads, die_with_parent=True,
                                         log_dir=self._log_dir)
            self._starting.append(server.process)
            self._wait_ready([server])
        except EngineError as exc:
            logger.warning("could not restart an embedded llama.cpp server: %s", exc)
            return
        server.restarted = True
        with self._lock:
            if index >= len(self._servers) or self._servers[index] is not dead:  # the pool was stopped meanwhile
                terminate(server.process)
                return
            self._servers[index] = server
            self.restarts += 1
            pool = self.pool
        if pool is not None:
            pool.replace(index, server.base_url)
        logger.info("embedded llama.cpp server restarted at %s", server.base_url)

    # -- what runs ---------------------------------------------------------------------------

    def pool_at(self, base_url: str) -> Pool | None:
        """The pool if base_url is the URL engines hold for it."""
        return self.pool if base_url == self.pool_url else None

    def shared_base_url(self, size: int | None = None) -> str:
        """Start the pool and return it as a LOCAL_BASE_URL for child processes: every server's URL,
        comma-separated (textgrad.serving.backends.route reads it as one pool)."""
        self.ensure(size)
        return ",".join(s.base_url for s in list(self._servers))

    def info(self) -> dict[str, object] | None:
        """pid, URL, model and log of the first server, the whole pool under "servers" and the restarts
        so far, or None when no server runs (for reports and tests)."""
        servers = list(self._servers)
        if not servers or not servers[0].running():
            return None
        first = servers[0]
        return {"pid": first.process.pid, "base_url": first.base_url, "model_path": first.model_path,
                "log_path": first.log_path, "restarts": self.restarts,
                "servers": [{"pid": s.process.pid, "base_url": s.base_url, "threads": s.threads,
                             "running": s.running()} for s in servers]}

    def served_model_path(self, base_url: str, model: str) -> str | None:
        """The GGUF file behind a llama.cpp server at base_url: this pool's, or for LOCAL_BASE_URL the one
        LOCAL_MODEL_PATH / the packaged model names, if the server reports that model (our alias is the
        file's stem, as scripts/llamacpp_serve.sh and the embedded server set it)."""
        servers = list(self._servers)
        if servers and base_url == self.pool_url:
            return servers[0].model_path
        path = llama_process.find_packaged_model()
        return path if model in (Path(path).stem, path) else None

    # -- stopping ----------------------------------------------------------------------------

    def _drop(self) -> list[ServerProcess]:
        servers = list(self._servers)
        self._servers.clear()
        self.pool = self.pool_url = None
        return servers

    def stop(self) -> None:
        """Stop the servers and remove their logs unless a failure asked to keep them; safe to repeat."""
        with self._lock:
            servers = self._drop()
        for server in servers:  # signalled all at once, so they stop in parallel
            if server.running():
                with contextlib.suppress(OSError):
                    server.process.terminate()
        for server in servers:
            terminate(server.process)
        self._remove_logs()

    def keep_logs(self) -> list[str]:
        """The run failed: keep the servers' logs at exit; returns their paths for the error line."""
        self._keep_logs = True
        return [path for path in self._logs if os.path.exists(path)]

    def failure_note(self) -> str:
        """For the end of an error line: keep the servers' logs and name them ("" if none ran)."""
        logs = self.keep_logs()
        return f" (embedded llama.cpp server log kept: {', '.join(logs)})" if logs else ""

    def _forget_log(self, path: str) -> None:
        if path in self._logs:
            self._logs.remove(path)

    def _remove_logs(self) -> None:
        if self._keep_logs:
            return
        for path in list(self._logs):
            Path(path).unlink(missing_ok=True)
            self._forget_log(path)

    def _on_signal(self, signum: int, frame: object) -> None:
        # No lock here: another thread may hold it for the whole start-up, and a signal
        # handler must not wait on it. Terminating twice is harmless.
        self._stop.request()  # first: the calls the servers' end breaks must not retry or blame them
        for process in [*self._starting, *(s.process for s in self._servers)]:
            # A short grace: uvicorn would otherwise finish the generation in flight before exiting.
            terminate(process, grace=SIGNAL_STOP_GRACE_S)
        self._remove_logs()  # a stop on request is no failure (SIGTERM's default action skips atexit)
        previous = self._previous_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt
        elif previous in (signal.SIG_DFL, None):
            # Re-deliver with the default action so the exit status still says "killed by signal".
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def install_signal_handlers(self) -> None:
        """Stop the servers on Ctrl-C, SIGTERM or SIGHUP, then defer to whatever handler was there before.

        Python only allows this from the main thread; elsewhere it is a no-op and the
        atexit hook plus the parent-death signal still cover clean-up.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current == self._on_signal or current == signal.SIG_IGN:
                continue  # already ours, or the process deliberately ignores it
            self._previous_handlers[signum] = current
            signal.signal(signum, self._on_signal)
