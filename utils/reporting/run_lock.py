"""One process per run folder: the folder is claimed under an exclusive lock held for the run's whole life.

The lock is an flock(2) on <run folder>/.lock. The kernel drops it when the process ends, however it
ends (kill -9 included), so a lock never outlives its run and a resume never has to clear it; and the
file stays (removing it would let a third process lock a file the second one no longer sees). Whoever
holds the lock writes who it is into the file, for the error line of whoever comes second.

A new run takes the lock and only then checks that the folder holds no run, so of two runs of one name
started together exactly one runs; the other stops at once with one line (exit code 2) and writes
nothing. Two resumes of one run, or a run and a resume of it, exclude each other the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from utils.config import UsageError

LOCK_FILE = ".lock"


def holds_a_run(run_dir: Path) -> bool:
    """Something besides the lock file is in the folder: a run started there."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


@contextlib.contextmanager
def claim_run_folder(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold run_dir's lock for the block (made if need be); UsageError if another process holds it, or if a
    new run (not resume) finds a run in it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # the up-front check passed, yet the folder cannot be made (full disk, /proc)
        raise UsageError(f"cannot create {exc.filename or run_dir} ({exc.strerror}): choose an --output_dir "
                         "you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise UsageError(f"{run_dir} is in use by another run ({holder}): wait for it to end, or choose "
                             "another --run_name") from None
        if not resume and holds_a_run(run_dir):
            raise UsageError(f"{run_dir} already holds a run: pass --resume to continue it or pick another "
                             "--run_name")
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with it
