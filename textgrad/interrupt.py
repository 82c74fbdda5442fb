"""The process-wide stop flag: after Ctrl-C (or SIGTERM) no LLM call starts, retries or waits any more.

Calls in flight end on their own within a moment (the embedded server is stopped with the process, a
remote reply is simply not waited for), and none of them is reported as the server's failure: they
raise `Interrupted`, a KeyboardInterrupt, which no `except Exception` of the pipeline swallows.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_stop = threading.Event()


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
    request_stop()
    raise KeyboardInterrupt


def install_sigint_handler() -> None:
    """Ctrl-C sets the flag before KeyboardInterrupt reaches the main thread (main thread only)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
            signal.default_int_handler, None):
        signal.signal(signal.SIGINT, _on_sigint)
