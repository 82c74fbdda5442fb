"""The process-wide stop flag: after Ctrl-C (or SIGTERM) no LLM call starts, retries or waits any more.

Calls in flight end on their own within a moment (the embedded server is stopped with the process, a
remote reply is simply not waited for), and none of them is reported as the server's failure: they
raise `Interrupted`, a KeyboardInterrupt, which no `except Exception` of the pipeline swallows.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

# After Ctrl-C the run normally ends in well under a second. Past this grace something is stuck (a bug):
# the process ends anyway, resumable as after any interrupt, and leaves the stack of every thread behind.
STOP_GRACE_S = 10.0

_stop = threading.Event()
_sigint = threading.Event()  # Ctrl-C seen (not a stop requested by other means, e.g. a test)
_exit_line: Callable[[], str] | None = None  # main.py's resume hint
_wake: socket.socket | None = None  # written on Ctrl-C; the watchdog thread reads the other end


class Interrupted(KeyboardInterrupt):
    """An LLM call abandoned because the process is stopping: not the endpoint's fault."""


def request_stop() -> None:
    _stop.set()


def stopping() -> bool:
    return _stop.is_set()


def check() -> None:
    """Raise Interrupted once a stop was requested."""
    if _stop.is_set():
        raise Interrupted("stopped by the user")


def sleep(seconds: float) -> None:
    """time.sleep that ends at once, with Interrupted, when a stop is requested during it."""
    if _stop.wait(seconds):
        raise Interrupted("stopped by the user")


def reset() -> None:
    """Clear the flag (a process that runs again after an interrupt: tests, notebooks)."""
    _stop.clear()


def _on_sigint(signum: int, frame: Any) -> None:
    if _sigint.is_set():  # a second Ctrl-C: no more waiting on anything
        _end_now("a second Ctrl-C")
    _sigint.set()
    request_stop()
    if _wake is not None:  # the C-level wake-up may have been taken over since (asyncio sets its own)
        with contextlib.suppress(OSError):
            _wake.send(bytes([signal.SIGINT]))
    raise KeyboardInterrupt


def _end_now(reason: str, trace: str | None = None) -> None:
    # os.write and os._exit: the stuck thread may hold sys.stderr's lock or an atexit hook's.
    where = f" (what every thread was doing: {trace})" if trace else ""
    last = _exit_line() if _exit_line else "interrupted"
    os.write(2, f"\nwarning: {reason}; ending the run now{where}\n{last}\n".encode())
    os._exit(130)


def _watch_the_stop(woken: socket.socket) -> None:
    # Woken through the signal's wake-up fd, which the interpreter writes at C level when the signal
    # arrives, so the grace starts even if the main thread is stuck where Python handlers never run.
    while signal.SIGINT not in woken.recv(64):
        pass
    time.sleep(STOP_GRACE_S)
    trace = os.path.join(tempfile.gettempdir(), f"fedtextgrad-stop-{os.getpid()}.txt")
    try:
        with open(trace, "w") as out:
            faulthandler.dump_traceback(out, all_threads=True)
    except OSError:
        trace = None  # type: ignore[assignment]
    _end_now(f"the run had not ended {STOP_GRACE_S:.0f} s after Ctrl-C", trace)


def install_sigint_handler(exit_line: Callable[[], str] | None = None) -> None:
    """Ctrl-C sets the flag before KeyboardInterrupt reaches the main thread (main thread only).

    exit_line: the last line printed when the run is ended for want of a clean stop (a second Ctrl-C,
    or the grace running out). The watchdog thread starts now, not in the handler: a handler that
    started a thread could wait on a lock the interrupted code holds."""
    global _exit_line
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) not in (
            signal.default_int_handler, None):
        return
    _exit_line = exit_line
    signal.signal(signal.SIGINT, _on_sigint)
    global _wake
    woken, _wake = socket.socketpair()
    _wake.setblocking(False)
    signal.set_wakeup_fd(_wake.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch_the_stop, args=(woken,), name="fedtextgrad-stop-watch", daemon=True).start()
