"""How the round loop runs a phase (the zero-shot evaluation, a round, the final test): retried when the
LLM endpoint fails it, stopped at the last checkpoint when it keeps failing; or in the background,
beside another phase.
"""

from __future__ import annotations

import contextvars
import errno
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
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
    """The run stopped mid-way at its last checkpoint, resumable: the LLM endpoint kept failing a phase, or a
    file of the run could not be written."""


def resume_command(run_dir: Path) -> str:
    return f"python main.py --resume --run_name {run_dir.name} --output_dir {run_dir.parent}"


# Why a file cannot be written (a full disk or quota, a read-only or vanished folder, permissions):
# the run stops at its last checkpoint; anything else raising OSError is a bug.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO,
                  errno.ENOENT, errno.ENOTDIR}


def storage_failure(exc: OSError, run_dir: Path) -> RunStopped | None:
    """The one line a run stopped by a file it cannot write ends with, or None if exc is no such failure."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    where = exc.filename or run_dir
    return RunStopped(f"cannot write {where} ({exc.strerror}); the run stopped at its last checkpoint, its files "
                      f"intact: free some space or fix the folder's permissions, then continue with "
                      f"{resume_command(run_dir)}")


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
                    f"its last checkpoint: restart or fix the server, then continue with "
                    f"{resume_command(log.run_dir)}") from None
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
