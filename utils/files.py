"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

The new content goes to a temporary file in the same folder, then is renamed over the target (a rename
within one filesystem is atomic). A kill can leave only the temporary file behind; RunLog removes
those on --resume.

A kill loses nothing a process has written: the kernel keeps it. What can be lost is what had not
reached the disk when the machine itself went down, so whatever a later file points at must be on disk
before that file is. write_bytes_atomic syncs the content of the one file it writes before renaming
it; a run's prompts and events are written without a sync of their own, and its checkpoint (and
results.json) is written with write_after_sync: one sync of the filesystem makes everything written so far
durable at once, and only then does the checkpoint take its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# mkstemp creates files readable by their owner only; outputs should get the usual umask-based mode so
# collaborators on a shared machine can read a run. Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """An OSError raised inside names path: a failed write() (a full disk) does not say which file it wrote."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _write_temp(path: Path, data: bytes, fsync: bool) -> str:
    """data in a new temporary file beside path (removed again if writing fails); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not reach the disk before the content does
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _rename(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """path replaced by data at once; durable: its content is on disk before the new name is (an fsync).
    Not durable: a later write_after_sync on the same filesystem makes it so."""
    path = Path(path)
    with naming(path):
        _rename(_write_temp(path, data, fsync=durable), path)


def write_after_sync(path: str | os.PathLike, data: bytes) -> None:
    """path replaced by data at once, after one sync has put on disk its content and everything written
    before it on the same filesystem: a file that points at other files (a checkpoint) never reaches
    the disk before they do."""
    path = Path(path)
    with naming(path):
        tmp = _write_temp(path, data, fsync=False)
        try:
            sync_filesystem(path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _rename(tmp, path)


def sync_filesystem(folder: Path) -> None:
    """Everything written so far to the filesystem holding folder reaches the disk: Linux's syncfs (that
    filesystem only), else os.sync (all of them)."""
    if sys.platform.startswith("linux"):
        import ctypes  # only here: a run's first checkpoint comes after its first requests

        fd = os.open(folder, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error), str(folder))
        finally:
            os.close(fd)
    else:
        os.sync()


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_bytes_atomic(path, json_bytes(data))


def writable_folder(path: Path) -> bool:
    """True if path is (or could be created as) a writable folder; leaves nothing behind.

    A missing folder is tried for real, as an empty temporary folder made and removed in its nearest
    existing parent: permissions alone do not tell (root passes them all, yet /proc takes no folder)."""
    path = path.resolve()
    missing = not path.exists()
    while not path.exists():
        path = path.parent
    if not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
        return False
    if missing:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".fedtextgrad-probe-", dir=path))
        except OSError:
            return False
    return True
