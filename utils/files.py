"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

The new content goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (a rename within one filesystem is atomic). A kill can leave only the temporary file behind;
RunLog removes those on --resume.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not reach the disk before the content does
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


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
