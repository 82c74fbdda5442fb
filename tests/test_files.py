"""Atomic writes: whole files only, no temporary files left behind, the usual file mode."""

from __future__ import annotations

import os
import stat

import pytest

from utils.files import write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "results.json"
    write_json_atomic(target, {"a": 1})
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_atomic_write_uses_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import utils.files
        importlib.reload(utils.files)  # the module reads the umask once, at import
        utils.files.write_text_atomic(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
        importlib.reload(utils.files)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "old\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the new bytes were written to the temp file
    with pytest.raises(OSError):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
