"""One process per run folder, and checkpoints checked before a resume trusts them.

Two runs of one name started together: exactly one runs, the other stops at once with one line (exit
code 2) and the folder holds one run's files. A checkpoint that is damaged (cut short, empty, random
bytes, a key missing, a value of the wrong type, out of range or inconsistent) stops --resume with one
line naming the file, exit code 2, and leaves every file of the folder as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from run_helpers import REPO, main_command, main_env, read_events, run_args, run_main

from bench.fake_server import FakeServer
from utils.config import UsageError
from utils.federated.checkpoint import read_checkpoint
from utils.reporting.run_lock import LOCK_FILE, claim_run_folder

EXPERIMENT = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
              "--homo_split_num", "2", "--max_epochs", "2", "--max_steps", "1", "--batch_size", "2",
              "--seed", "3", "--aggregate_method", "concat"]
TASKS = ["synthetic_object_counting"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and lines[-1].startswith("error: ")
    return lines[-1]


# ---------------------------------------------------------------- the lock


def test_a_claimed_folder_cannot_be_claimed_again_until_released(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with claim_run_folder(run_dir, resume=False):
        assert "pid " in (run_dir / LOCK_FILE).read_text()
        for resume in (False, True):
            with pytest.raises(UsageError, match=r"is in use by another run \(pid \d+ on .+, since .+\)"):
                with claim_run_folder(run_dir, resume=resume):
                    pass
        (run_dir / "config.yaml").write_text("module: train_homo_fed\n")
    with pytest.raises(UsageError, match="already holds a run"):  # released, but a run is there now
        with claim_run_folder(run_dir, resume=False):
            pass
    with claim_run_folder(run_dir, resume=True):  # its resume may have it
        pass


def test_two_runs_of_one_name_started_together_give_one_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FakeServer(latency=0.02) as server:
        argv = run_args(out, "same", tmp_path / "cache", *EXPERIMENT)
        starts = [subprocess.Popen(main_command(argv), env=main_env(server.base_url), cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in starts]
        codes = sorted(code for code, _ in outcomes)
        assert codes == [0, 2], outcomes
        loser = next(stderr for code, stderr in outcomes if code == 2)
        assert len(loser.strip().splitlines()) == 1 and "Traceback" not in loser
        # The holder is named once it has written its pid, a moment after taking the lock.
        assert re.search(r"is in use by another run \((pid \d+ on |another process\))", loser) or \
            "already holds a run" in loser

        events = read_events(out / "same")
        assert [e["type"] for e in events].count("finished") == 1  # one run's events, not two interleaved
        assert [e["round"] for e in events if e["type"] == "round"] == [1, 2]

        # And two resumes of the finished run: one redoes the final test (uncached, on a slow server: it holds
        # the folder for seconds), the other is refused at once.
        server.latency = 1.5
        resumes = list(ThreadPoolExecutor(2).map(
            lambda _: run_main(["--resume", "--run_name", "same", "--output_dir", str(out), "--no_cache"],
                               main_env(server.base_url)), range(2)))
    assert sorted(r.returncode for r in resumes) == [0, 2], [r.stderr[-500:] for r in resumes]
    refused = next(r for r in resumes if r.returncode == 2)
    assert "is in use by another run" in one_error_line(refused)


# ---------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder with its checkpoint after round 2 (of 2)."""
    root = tmp_path_factory.mktemp("checkpoint")
    with FakeServer(latency=0.01) as server:
        done = run_main(run_args(root / "out", "run", root / "cache", *EXPERIMENT), main_env(server.base_url))
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "out" / "run"


def edited(change: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    def damage(raw: bytes) -> bytes:
        data = json.loads(raw)
        change(data)
        return json.dumps(data).encode()
    return damage


DAMAGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "cut_short": (lambda raw: raw[: len(raw) // 2], "not valid JSON"),
    "empty": (lambda raw: b"", "not valid JSON"),
    "random_bytes": (lambda raw: bytes(range(256)) * 4, "not UTF-8"),
    "a_list": (lambda raw: b"[1, 2]", "not a JSON object"),
    "missing_key": (edited(lambda d: d.pop("global_prompt")), "global_prompt is missing"),
    "round_as_text": (edited(lambda d: d.update(round="2")), 'round is "2", not a whole number'),
    "round_as_bool": (edited(lambda d: d.update(round=True)), "round is true, not a whole number"),
    "negative_round": (edited(lambda d: d.update(round=-2)), "round is -2"),
    "history_short": (edited(lambda d: d["history"].pop()), "its history holds rounds [1]"),
    "accuracy_nan": (edited(lambda d: d["zero_shot"]["val"].update(mean=float("nan"))),
                     "zero_shot.val.mean is nan, not an accuracy"),
    "accuracy_above_one": (edited(lambda d: d["best"].update(val=1.5)), "best.val is 1.5"),
    "negative_counter": (edited(lambda d: d["llm"].update(calls=-1)), "llm.calls is -1"),
    "other_task": (edited(lambda d: d["zero_shot"].update(test={"BBH_snarks": 0.5, "mean": 0.5})),
                   "not this run's tasks"),
    "best_not_a_round": (edited(lambda d: d["best"].update(prompt="made up")), "best names round"),
    "events_longer_than_file": (edited(lambda d: d.update(events_size=10**9)), "does not fit events.jsonl"),
}


def test_the_finished_run_checkpoint_reads_back(finished_run: Path) -> None:
    saved = read_checkpoint(finished_run, 2, TASKS)
    assert saved is not None and saved.state.round == 2 and len(saved.state.history) == 2
    assert saved.events_size <= (finished_run / "events.jsonl").stat().st_size


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_one_line_and_the_folder_is_left_as_it_was(damage: str, finished_run: Path,
                                                                          tmp_path: Path) -> None:
    change, words = DAMAGES[damage]
    run_dir = tmp_path / "out" / "run"
    shutil.copytree(finished_run, run_dir)
    path = run_dir / "checkpoint.json"
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(UsageError) as info:
        read_checkpoint(run_dir, 2, TASKS)
    message = str(info.value)
    assert message.startswith(f"{path} is damaged (") and words in message and "\n" not in message
    assert "new --run_name" in message


def test_a_checkpoint_past_the_runs_last_round_names_the_flag_to_fix(finished_run: Path) -> None:
    with pytest.raises(UsageError, match=r"after round 2, past this run's 1 rounds: resume with --rounds 2"):
        read_checkpoint(finished_run, 1, TASKS)


@pytest.mark.parametrize("damage", ["cut_short", "random_bytes", "round_as_text", "negative_round"])
def test_resume_of_a_damaged_checkpoint_exits_2_and_changes_nothing(damage: str, finished_run: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_run, out / "run")
    path = out / "run" / "checkpoint.json"
    path.write_bytes(DAMAGES[damage][0](path.read_bytes()))
    (out / "run" / "events.jsonl").open("a").write('{"type": "step", "torn')  # what resume would cut back
    before = snapshot(tmp_path)
    with FakeServer() as server:
        done = run_main(["--resume", "--run_name", "run", "--output_dir", str(out), "--cache_dir",
                         str(tmp_path / "cache"), "--comet_mode", "offline"], main_env(server.base_url))
        assert server.chat_count == 0
    line = one_error_line(done)
    assert f"{path} is damaged" in line and DAMAGES[damage][1] in line
    assert snapshot(tmp_path) == before  # nothing overwritten, cut back or added (no comet archive either)


# ---------------------------------------------------------------- a file that cannot be written


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For a child process: files may not grow past `limit` bytes, and a write past it fails with EFBIG (File too
    large) instead of killing the process (as a full disk fails a write with ENOSPC)."""
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_that_cannot_be_written_mid_run_stops_it_in_one_line_and_resume_finishes(tmp_path: Path) -> None:
    argv = [*EXPERIMENT, "--max_epochs", "3"]
    with FakeServer(latency=0.01) as server:
        env = main_env(server.base_url, PYTHONDONTWRITEBYTECODE="1")
        reference = run_main(run_args(tmp_path / "ref", "run", tmp_path / "ref-cache", *argv), env)
        assert reference.returncode == 0, reference.stderr[-2000:]
        out, run_dir = tmp_path / "out", tmp_path / "out" / "run"
        full = subprocess.run(main_command(run_args(out, "run", tmp_path / "cache", *argv)), env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(12_000))
        resumed = run_main(["--resume", "--run_name", "run", "--output_dir", str(out)], env)
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert lines[-1].startswith(f"error: cannot write {run_dir}/") and "(File too large)" in lines[-1]
    assert lines[-1].endswith(f"continue with python main.py --resume --run_name run --output_dir {out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    from run_helpers import assert_run_files_intact, final_numbers, prompt_files

    assert_run_files_intact(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert final_numbers(results) == final_numbers(json.loads((tmp_path / "ref" / "run" / "results.json").read_text()))
    assert prompt_files(run_dir) == prompt_files(tmp_path / "ref" / "run")
