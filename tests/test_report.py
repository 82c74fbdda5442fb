"""utils.reporting.report on logs of a real tiny sweep (scripts/sweep_aggregation.sh, local engine, real BBH data)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import yaml

from utils.reporting.report import build_report, main

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("concat", "sum_uid")
SEEDS = ("1",)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, local_engine_url: str) -> dict[str, Any]:
    """Two aggregation methods at the smallest sizes, sharing the session's llama.cpp server (the
    second run is mostly answered from the response cache: the clients' prompts are the same)."""
    root = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "FEDTEXTGRAD_OUTPUT_DIR": str(root / "logs"),
           "FEDTEXTGRAD_DATA_DIR": str(REPO_ROOT.parent / "shared" / "data"), "FEDTEXTGRAD_SPLIT_SIZES": "3,3,3", "FEDTEXTGRAD_ROUNDS": "1", "METHODS": " ".join(METHODS),
           "SEEDS": " ".join(SEEDS), "TASKS": "BBH_object_counting", "LOCAL_BASE_URL": local_engine_url, "PYTHON": sys.executable}
    env.pop("FEDTEXTGRAD_UID", None)
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "sweep_aggregation.sh"), "--max_steps", "1", "--max_tokens", "32",
         "--feedback_max_tokens", "32", "--optimizer_max_tokens", "48", "--merge_max_tokens", "64",
         "--cache_dir", str(root / "cache"), "--comet_mode", "offline"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    group_dir = root / "logs" / "sweep_aggregation_homo"
    return {"dir": group_dir, "stdout": done.stdout, "runs": sorted(p.parent for p in group_dir.glob("*/results.json"))}


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def _cell(values: list[float], decimals: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {statistics.stdev(values):.{decimals}f}"


def _table_rows(markdown: str) -> list[dict[str, str]]:
    """The rows of the first markdown table, as {column title: cell}."""
    lines = markdown.split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_sweep_made_one_run_per_method_and_seed(sweep: dict[str, Any]) -> None:
    names = sorted(p.name for p in sweep["runs"])
    assert names == sorted(f"BBH_object_counting-{m}-seed{s}" for m in METHODS for s in SEEDS)
    for run_dir in sweep["runs"]:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["module"] == "train_homo_fed" and config["split_sizes"] == [3, 3, 3]
        assert config["max_steps"] == 1 and config["max_epochs"] == 1 and config["max_tokens"] == 32
    # The sweep tabulated its own runs at the end.
    assert (sweep["dir"] / "report" / "report.md").is_file()
    assert "| homo_fed | BBH_object_counting | concat |" in sweep["stdout"]


def test_report_rows_match_results_json(sweep: dict[str, Any]) -> None:
    markdown, _, notes = build_report([sweep["dir"]])
    assert notes == []
    rows = {row["aggregation"]: row for row in _table_rows(markdown)}
    assert set(rows) == set(METHODS)
    for method in METHODS:
        results = [_results(d) for d in sweep["runs"] if f"-{method}-" in d.name]
        row = rows[method]
        assert (row["module"], row["tasks"], row["local steps"], row["clients"], row["batch"], row["seeds"]) == (
            "homo_fed", "BBH_object_counting", "1", "3", "3", str(len(SEEDS)))
        assert row["zero-shot test"] == _cell([r["zero_shot"]["test"]["mean"] for r in results], 3)
        assert row["best val"] == _cell([r["best"]["val"] for r in results], 3)
        assert row["test (last)"] == _cell([r["final_test"]["last"]["mean"] for r in results], 3)
        assert row["test (best)"] == _cell([r["final_test"]["best"]["mean"] for r in results], 3)
        assert row["calls made (cache hits included)"] == _cell(
            [r["llm"]["calls"] + r["llm"]["cache_hits"] for r in results], 0)
        assert row["requests sent"] == _cell([r["llm"]["calls"] for r in results], 0)
        assert row["tokens"] == _cell([r["llm"]["prompt_tokens"] + r["llm"]["completion_tokens"] for r in results], 0)
        assert row["wall s"] == _cell([r["wall_seconds"] for r in results], 1)
        assert row["prompt tokens"] == _cell([r["rounds"][-1]["aggregate_tokens"] for r in results], 0)
        assert row["UID var"] == _cell([r["rounds"][-1]["aggregate_uid"]["variance"] for r in results], 2)


def test_uid_measures_reach_results_events_and_comet(sweep: dict[str, Any]) -> None:
    for run_dir in sweep["runs"]:
        uid = _results(run_dir)["rounds"][0]["aggregate_uid"]
        assert uid["tokens"] > 5 and 0 < uid["mean"] <= uid["max"] and uid["variance"] > 0
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        aggregate = next(e for e in events if e["type"] == "aggregate")
        assert aggregate["uid"] == uid
        assert all(e["uid"]["tokens"] > 5 for e in events if e["type"] == "client_update")
    archives = list((sweep["dir"] / "comet").glob("*.zip"))
    assert len(archives) == len(sweep["runs"])
    with zipfile.ZipFile(archives[0]) as archive:
        messages = archive.read("messages.json").decode()
    for stat in ("mean", "variance", "max"):
        assert f'"aggregate/uid_{stat}"' in messages


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_non_empty_pngs(sweep: dict[str, Any], tmp_path: Path) -> None:
    _, plots, _ = build_report([sweep["dir"]], tmp_path / "out")
    names = {p.name for p in plots}
    assert {"validation_by_round.png", "prompt_length_by_round.png", "uid_variance_by_round.png"} <= names
    for path in plots:
        width, height = _png_size(path)
        assert width > 200 and height > 200 and path.stat().st_size > 5000
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[:2] == (height, width) and pixels.min() < pixels.max()  # something is drawn
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| homo_fed |" in report and all(f"]({name})" in report for name in names)


def test_report_over_a_varied_grid_draws_the_sweep_plots(sweep: dict[str, Any], tmp_path: Path) -> None:
    # Copies of the real runs relabelled as other grid cells and seeds (with the test accuracy moved
    # per seed, so the spread is not zero), to check grouping, mean ± std and the versus-plots.
    shifts = {"11": 0.0, "12": 0.2, "13": 0.5}
    for run_dir in sweep["runs"]:
        for steps in (1, 5):
            for clients in (2, 3):
                for seed, shift in shifts.items():
                    copy = tmp_path / "grid" / f"{run_dir.name}-s{steps}-c{clients}-seed{seed}"
                    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("comet", "prompts", "plots"))
                    results = _results(copy)
                    results["settings"].update(max_steps=steps, seed=int(seed))
                    results["clients"] = [f"client{i}" for i in range(clients)]
                    results["final_test"]["best"]["mean"] += shift
                    (copy / "results.json").write_text(json.dumps(results))
    markdown, plots, _ = build_report([tmp_path / "grid"], tmp_path / "out")
    assert markdown.count("| homo_fed |") == len(METHODS) * 4
    for run_dir in sweep["runs"]:
        base = _results(run_dir)["final_test"]["best"]["mean"]
        expected = _cell([base + shift for shift in shifts.values()], 3)
        method = _results(run_dir)["aggregate_method"]
        rows = [row for row in _table_rows(markdown) if row["aggregation"] == method]
        assert len(rows) == 4 and {(row["seeds"], row["test (best)"]) for row in rows} == {("3", expected)}
    assert {(row["local steps"], row["clients"]) for row in _table_rows(markdown)} == {
        (s, c) for s in ("1", "5") for c in ("2", "3")}
    names = {p.name for p in plots}
    assert {"accuracy_vs_local_steps.png", "accuracy_vs_clients.png"} <= names
    assert "accuracy_vs_batch_size.png" not in names  # batch size did not vary
    for path in plots:
        _png_size(path)


def test_report_command_line(sweep: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.json").write_text("{}")
    assert main([str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished run") and err.count("\n") == 1

    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    out = tmp_path / "out"
    assert main([str(sweep["runs"][0]), str(broken), str(unfinished), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and str(broken) in captured.err
    assert "| homo_fed |" in captured.out and (out / "report.md").is_file()

    done = subprocess.run([sys.executable, "-m", "utils.reporting.report", str(sweep["dir"])], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("## Results")
