"""How the round loop runs a phase (the zero-shot evaluation, a round, the final test): retried when the
LLM endpoint fails it, stopped at the last checkpoint when it keeps failing; or in the background,
beside another phase.
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

from textgrad.errors import EngineError
from utils.reporting.tracking import RunLog

from .client import ClientUpdate, Engines

T = TypeVar("T")
# The engine already retried each call (about 15 s for a refused connection); one more try of the whole
# phase after this pause rides out a server restart, its finished calls coming from the cache. An
# endpoint that still answers (a call ran out of retries at a high error rate) gets up to PHASE_TRIES.
PHASE_RETRY_WAIT_S = 5.0
PHASE_TRIES = 3


class RoundFailed(RuntimeError):
    """No client of a round returned a prompt; the run stops at its last checkpoint."""


class RunStopped(RoundFailed):
    """The LLM endpoint failed a phase twice mid-run; the run stopped at its last checkpoint, resumable."""


def with_retries(phase: str, log: RunLog, engines: Engines, attempt: Callable[[bool], T],
                 on_stop: Callable[[], None] | None = None) -> T:
    """Run attempt(last_try); when the LLM endpoint fails it, drop the phase's events, wait and try again:
    once if the endpoint is down, up to PHASE_TRIES in all if it still answers. Then call on_stop and stop
    the run at its last checkpoint with the command that resumes it."""
    events_size = log.events_size()
    for tries in range(1, PHASE_TRIES + 1):
        try:
            return attempt(tries == PHASE_TRIES)
        except EngineError as exc:
            log.truncate_events(events_size)  # the next try (or the resumed run) writes them again
            if tries == PHASE_TRIES or (tries >= 2 and not _endpoints_answer(engines)):
                if on_stop is not None:
                    on_stop()
                raise RunStopped(
                    f"{phase} failed {tries} times because the LLM endpoint failed ({exc}); the run stopped at "
                    f"its last checkpoint: restart or fix the server, then continue with python main.py --resume "
                    f"--run_name {log.run_dir.name} --output_dir {log.run_dir.parent}") from None
            tqdm.write(f"warning: {phase} failed ({exc}); retrying it in {PHASE_RETRY_WAIT_S:.0f} s", file=sys.stderr)
            time.sleep(PHASE_RETRY_WAIT_S)
    raise AssertionError("unreachable")


def _endpoints_answer(engines: Engines) -> bool:
    try:
        for engine in dict.fromkeys([engines.test, engines.evaluation]):
            engine.check_available()
    except EngineError:
        return False
    return True


def lost_endpoint(update: ClientUpdate) -> str | None:
    """The endpoint's error if this client failed on an LLM call (the in-process clients record type: message)."""
    prefix = f"{EngineError.__name__}: "
    return update.error[len(prefix):] if update.error and update.error.startswith(prefix) else None


def in_background(fn: Callable[..., T], *args: Any) -> Future[T]:
    """fn(*args) in a thread of its own, in a copy of the caller's context (priority, meters)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtextgrad-round")
    future = executor.submit(contextvars.copy_context().run, fn, *args)
    executor.shutdown(wait=False)  # the thread ends when fn returns
    return future
