"""Atomic writes: whole files only, no temporary files left behind, the usual file mode."""

from __future__ import annotations

import json
import os
import stat

import pytest

import utils.files
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


def test_write_after_sync_syncs_before_the_new_content_takes_the_name(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.json"
    write_text_atomic(target, "round 1\n")
    (tmp_path / "prompt.txt").write_text("written before, not yet synced\n")
    seen = []

    def sync(folder):  # what the disk would hold if the machine went down right after this sync
        seen.append((target.read_text(), sorted(p.name for p in folder.iterdir())))

    monkeypatch.setattr(utils.files, "sync_filesystem", sync)
    utils.files.write_after_sync(target, b"round 2\n")
    assert len(seen) == 1
    content, names = seen[0]
    assert content == "round 1\n"  # the name still points at the old checkpoint while the sync runs...
    assert "prompt.txt" in names and any(n.startswith(".checkpoint.json.") for n in names)  # ...the new one waits
    assert target.read_text() == "round 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "prompt.txt"]


def test_a_failed_sync_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.json"
    write_text_atomic(target, "round 1\n")

    def sync(folder):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(utils.files, "sync_filesystem", sync)
    with pytest.raises(OSError):
        utils.files.write_after_sync(target, b"round 2\n")
    assert target.read_text() == "round 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]


def test_the_real_sync_runs(tmp_path):
    utils.files.sync_filesystem(tmp_path)  # syncfs on Linux, os.sync elsewhere: no error
    utils.files.write_after_sync(tmp_path / "x.json", b"{}\n")
    assert (tmp_path / "x.json").read_text() == "{}\n"


def test_a_run_makes_its_outputs_durable_with_one_sync_per_checkpoint_and_no_fsync(tmp_path, monkeypatch):
    """The prompts, events and results of a run reach the disk through the checkpoint's sync (and one at
    results.json), not with an fsync per file: a 40-client round wrote 132 files one fsync at a time."""
    from scripted_engine import ScriptedEngine

    from utils.federated.client import Engines, LocalSettings
    from utils.federated.experiment import Client, Experiment
    from utils.federated.rounds import run_experiment
    from utils.reporting.tracking import open_run_log
    from utils.tasks.registry import resolve_task
    from utils.tasks.synthetic import generate_examples

    task = resolve_task("synthetic_object_counting")
    examples = generate_examples(task.name, 8, seed=3)
    sets = {task.name: (task, generate_examples(task.name, 4, seed=1))}
    exp = Experiment(module="test", tasks=[task], clients=[Client(f"c{i}", task, examples[i * 2:i * 2 + 2])
                                                           for i in range(4)],
                     val_sets=sets, test_sets=sets, aggregate_method="summarization", rounds=3, clients_per_round=4,
                     settings=LocalSettings(max_steps=1, batch_size=2), run_larger_model=False)
    run_dir = tmp_path / "run"
    durable_writes: list[str] = []
    real_sync = utils.files.sync_filesystem

    def sync(folder):
        checkpoint = run_dir / "checkpoint.json"
        durable_writes.append(f"sync, checkpoint of round {json.loads(checkpoint.read_text())['round']}"
                              if checkpoint.exists() else "sync, no checkpoint yet")
        real_sync(folder)

    monkeypatch.setattr(utils.files, "sync_filesystem", sync)
    monkeypatch.setattr(os, "fsync", lambda fd: durable_writes.append("fsync"))
    engine = ScriptedEngine()
    log = open_run_log(run_dir, "disabled", "t", tmp_path / "comet")
    run_experiment(exp, Engines(engine, engine), log)
    assert len(list((run_dir / "prompts").rglob("*.txt"))) == 2 + 3 * 5  # round 0: global + served; 4 clients + global
    # The zero-shot checkpoint, one per round, results.json; each sync before the name moves on.
    assert durable_writes == ["sync, no checkpoint yet", "sync, checkpoint of round 0",
                              "sync, checkpoint of round 1", "sync, checkpoint of round 2",
                              "sync, checkpoint of round 3"]
