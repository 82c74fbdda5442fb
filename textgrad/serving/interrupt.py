"""The stop flag: after Ctrl-C, SIGTERM or SIGHUP no LLM call starts, retries or waits any more.

A runtime holds one `StopFlag`. Calls in flight end on their own within a moment (the embedded server is
stopped with the process, a remote reply is simply not waited for), and none of them is reported as the
server's failure: they raise `Interrupted`, a KeyboardInterrupt, which no `except Exception` of the
pipeline swallows. `StopSignals` is main.py's handler of the three signals: it sets the flag, raises
KeyboardInterrupt in the main thread (not inside a `StopFlag.deferred()` block, which ends first), and
ends a run that does not stop by itself.
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
from collections.abc import Callable, Iterator
from typing import Any

# After a stop the run normally ends in well under a second. Past this grace something is stuck (a bug):
# the process ends anyway, resumable as after any interrupt, and leaves the stack of every thread behind.
STOP_GRACE_S = 10.0
# What schedulers, `kill` and a closing terminal send: each stops a run as Ctrl-C does.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
# Sent to the main thread to wake it from a wait a stop signal did not interrupt (its handler does nothing).
WAKE_SIGNAL = signal.SIGUSR1
WAKE_AFTER_S = 0.1


class Interrupted(KeyboardInterrupt):
    """An LLM call abandoned because the process is stopping: not the endpoint's fault."""


class StopFlag:
    """Set once a stop is requested; checked before every request, retry and backoff."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._deferring = 0  # deferred() blocks under way in the main thread
        self._pending = False  # a stop signal came during one: raised when it ends
        self.signal: int | None = None  # the signal that asked for the stop, if one did

    def request(self) -> None:
        self._event.set()

    def defer_interrupt(self) -> bool:
        """For the signal handler: True (and the interrupt kept for later) inside a deferred() block."""
        if self._deferring:
            self._pending = True
        return bool(self._deferring)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """In the main thread, a stop signal arriving inside the block interrupts only when the block ends:
        for short steps that must not be cut in the middle (a round's state updated and its checkpoint
        saved). Elsewhere it changes nothing (signals interrupt the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending:
            self._pending = False
            raise KeyboardInterrupt

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
        self.signal, self._pending = None, False


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP set `stop` before KeyboardInterrupt reaches the main thread; a second
    signal, or a run still going STOP_GRACE_S after the first, ends the process (exit code 128 + the
    signal's number) with `exit_line()` as its last line."""

    def __init__(self, stop: StopFlag, exit_line: Callable[[], str] | None = None,
                 grace_s: float = STOP_GRACE_S) -> None:
        self.stop = stop
        self.exit_line = exit_line
        self.grace_s = grace_s
        self._wake: socket.socket | None = None  # written on a signal; the watchdog thread reads the other end

    def install(self) -> bool:
        """Handle the stop signals (main thread only, and only those still at Python's default); False if
        none could be.

        The watchdog thread starts now, not in the handler: a handler that started a thread could wait
        on a lock the interrupted code holds."""
        if threading.current_thread() is not threading.main_thread():
            return False
        ours = [s for s in STOP_SIGNALS if signal.getsignal(s) in (signal.default_int_handler, signal.SIG_DFL, None)]
        for signum in ours:
            signal.signal(signum, self._on_signal)
        if not ours:
            return False
        if signal.getsignal(WAKE_SIGNAL) == signal.SIG_DFL:
            signal.signal(WAKE_SIGNAL, lambda signum, frame: None)
        woken, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        signal.set_wakeup_fd(self._wake.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(woken,), name="fedtextgrad-stop-watch", daemon=True).start()
        return True

    @property
    def exit_code(self) -> int:
        """128 + the number of the signal that stopped the run (130 for Ctrl-C, also when none did)."""
        return 128 + (self.stop.signal or signal.SIGINT)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop.signal is not None:  # a second signal: no more waiting on anything
            self._end_now(f"a second {SIGNAL_NAMES[signal.Signals(signum)]}")
        self.stop.signal = signum
        self.stop.request()
        if self._wake is not None:  # the C-level wake-up may have been taken over since (asyncio sets its own)
            with contextlib.suppress(OSError):
                self._wake.send(bytes([signum]))
        if not self.stop.defer_interrupt():
            raise KeyboardInterrupt

    def _end_now(self, reason: str, trace: str | None = None) -> None:
        # os.write and os._exit: the stuck thread may hold sys.stderr's lock or an atexit hook's.
        where = f" (what every thread was doing: {trace})" if trace else ""
        last = self.exit_line() if self.exit_line else "interrupted"
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            os.write(2, f"\nwarning: {reason}; ending the run now{where}\n{last}\n".encode())
        os._exit(self.exit_code)

    def _watch(self, woken: socket.socket) -> None:
        # Woken through the signal's wake-up fd, which the interpreter writes at C level when the signal
        # arrives, so the grace starts even if the main thread is stuck where Python handlers never run.
        while not set(STOP_SIGNALS) & set(woken.recv(64)):
            pass
        # The kernel may hand the signal to another thread, and then a main thread asleep in a wait (on a
        # lock, a future) runs the handler only once it wakes, which may be never: wake it.
        time.sleep(WAKE_AFTER_S)
        if self.stop.signal is None:
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(threading.main_thread().ident or 0, WAKE_SIGNAL)
        time.sleep(max(self.grace_s - WAKE_AFTER_S, 0.0))
        trace: str | None = os.path.join(tempfile.gettempdir(), f"fedtextgrad-stop-{os.getpid()}.txt")
        try:
            with open(trace, "w") as out:  # type: ignore[arg-type]
                faulthandler.dump_traceback(out, all_threads=True)
        except OSError:
            trace = None
        name = SIGNAL_NAMES[signal.Signals(self.stop.signal or signal.SIGINT)]
        self._end_now(f"the run had not ended {self.grace_s:.0f} s after {name}", trace)
