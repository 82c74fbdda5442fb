"""API keys never reach the run's files, its comet_ml offline archive or its console output."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from run_helpers import main_env, run_args, run_main

from bench.fake_server import FakeServer

KEYS = {
    "OPENAI_API_KEY": "sk-proj-TESTSECRET-openai-5f1c9a7e3b",
    "VLLM_API_KEY": "vllm-TESTSECRET-key-0d4e8b2a6c",
    "COMET_API_KEY": "TESTSECRETcomet7a9c1e3f5b",
}


def files_holding_a_key(root: Path) -> list[str]:
    """Every file under root, and every member of every zip archive, that contains one of the keys."""
    found = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        blobs = {str(path): path.read_bytes()}
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs.update({f"{path}!{name}": archive.read(name) for name in archive.namelist()})
        found += [where for where, blob in blobs.items() for key in KEYS.values() if key.encode() in blob]
    return found


def test_no_key_in_outputs_comet_archive_or_console(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = run_args(out, "run", tmp_path / "cache", "--module", "train_homo_fed", "--task",
                    "synthetic_object_counting", "--split_sizes", "6,3,3", "--homo_split_num", "2",
                    "--max_epochs", "1", "--max_steps", "1", "--aggregate_method", "sum_uid",
                    "--comet_mode", "offline")
    # Faults make the engine log retries and a malformed reply takes the format-failure path: more text
    # that could carry a key.
    with FakeServer(seed=3, rate_500=0.1, rate_malformed=0.05) as server:
        done = run_main(argv, main_env(server.base_url, **KEYS))
        auth_headers_seen = server.stats["requests"] > 0
    assert done.returncode == 0, done.stderr[-2000:]
    assert auth_headers_seen
    archives = list((out / "comet").glob("*.zip"))
    assert len(archives) == 1 and zipfile.ZipFile(archives[0]).namelist()  # the archive was written
    assert (out / "run" / "config.yaml").is_file() and (out / "run" / "results.json").is_file()
    assert files_holding_a_key(tmp_path) == []
    assert not any(key in done.stdout + done.stderr for key in KEYS.values())


def test_the_search_finds_a_key_in_a_zip_member(tmp_path: Path) -> None:
    """The check above can fail: a key inside a compressed archive member is found."""
    with zipfile.ZipFile(tmp_path / "a.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("nested/params.json", json.dumps({"api_key": KEYS["COMET_API_KEY"]}))
    assert files_holding_a_key(tmp_path) == [f"{tmp_path / 'a.zip'}!nested/params.json"]
