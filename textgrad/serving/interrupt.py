"""The stop flag: after Ctrl-C (or SIGTERM) no LLM call starts, retries or waits any more.

A runtime holds one `StopFlag`. Calls in flight end on their own within a moment (the embedded server is
stopped with the process, a remote reply is simply not waited for), and none of them is reported as the
server's failure: they raise `Interrupted`, a KeyboardInterrupt, which no `except Exception` of the
pipeline swallows. `SigintWatch` is main.py's Ctrl-C handler: it sets the flag, and ends a run that
does not stop by itself.
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


class Interrupted(KeyboardInterrupt):
    """An LLM call abandoned because the process is stopping: not the endpoint's fault."""


class StopFlag:
    """Set once a stop is requested; checked before every request, retry and backoff."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Interrupted once a stop was requested."""
        if self._event.is_set():
            raise Interrupted("stopped by the user")

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends at once, with Interrupted, when a stop is requested during it."""
        if self._event.wait(seconds):
            raise Interrupted("stopped by the user")

    def clear(self) -> None:
        """Forget the stop (a runtime used again after an interrupt: a notebook)."""
        self._event.clear()


class SigintWatch:
    """Ctrl-C sets `stop` before KeyboardInterrupt reaches the main thread; a second Ctrl-C, or a run
    still going STOP_GRACE_S after the first, ends the process with `exit_line()` as its last line."""

    def __init__(self, stop: StopFlag, exit_line: Callable[[], str] | None = None,
                 grace_s: float = STOP_GRACE_S) -> None:
        self.stop = stop
        self.exit_line = exit_line
        self.grace_s = grace_s
        self._seen = threading.Event()  # Ctrl-C seen (not a stop requested by other means, e.g. a test)
        self._wake: socket.socket | None = None  # written on Ctrl-C; the watchdog thread reads the other end

    def install(self) -> bool:
        """Become the SIGINT handler (main thread only, and only over Python's default); False if not.

        The watchdog thread starts now, not in the handler: a handler that started a thread could wait
        on a lock the interrupted code holds."""
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) not in (
                signal.default_int_handler, None):
            return False
        signal.signal(signal.SIGINT, self._on_sigint)
        woken, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        signal.set_wakeup_fd(self._wake.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(woken,), name="fedtextgrad-stop-watch", daemon=True).start()
        return True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._seen.is_set():  # a second Ctrl-C: no more waiting on anything
            self._end_now("a second Ctrl-C")
        self._seen.set()
        self.stop.request()
        if self._wake is not None:  # the C-level wake-up may have been taken over since (asyncio sets its own)
            with contextlib.suppress(OSError):
                self._wake.send(bytes([signal.SIGINT]))
        raise KeyboardInterrupt

    def _end_now(self, reason: str, trace: str | None = None) -> None:
        # os.write and os._exit: the stuck thread may hold sys.stderr's lock or an atexit hook's.
        where = f" (what every thread was doing: {trace})" if trace else ""
        last = self.exit_line() if self.exit_line else "interrupted"
        os.write(2, f"\nwarning: {reason}; ending the run now{where}\n{last}\n".encode())
        os._exit(130)

    def _watch(self, woken: socket.socket) -> None:
        # Woken through the signal's wake-up fd, which the interpreter writes at C level when the signal
        # arrives, so the grace starts even if the main thread is stuck where Python handlers never run.
        while signal.SIGINT not in woken.recv(64):
            pass
        time.sleep(self.grace_s)
        trace: str | None = os.path.join(tempfile.gettempdir(), f"fedtextgrad-stop-{os.getpid()}.txt")
        try:
            with open(trace, "w") as out:  # type: ignore[arg-type]
                faulthandler.dump_traceback(out, all_threads=True)
        except OSError:
            trace = None
        self._end_now(f"the run had not ended {self.grace_s:.0f} s after Ctrl-C", trace)
