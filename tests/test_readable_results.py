"""Plots and tables a reader can trust: every line visible (own marker, equal lines shifted, legend
outside the axes), one colour per task or group in every plot, prompt length from round 0, calls made
and requests sent apart, seeds counted once; config.yaml records only the flags a module uses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

from utils.config import parse_args
from utils.reporting.plots import OVERALL, draw, plot_run, run_series
from utils.reporting.report import markdown_report, round_series, versus_series
from utils.reporting.runs import Group, Run, group_runs, run_key
from utils.run_config import resolved_config

TASKS = ["BBH_object_counting", "BBH_multistep_arithmetic_two", "GSM8K"]


def hetero_results(val: float = 0.2, seed: int = 42, calls: int = 100, hits: int = 50) -> dict[str, Any]:
    """results.json of a 2-round heterogeneous run whose three tasks score the same every round."""
    scores = {task: val for task in TASKS} | {"mean": val}
    rounds = [{"round": r, "val": dict(scores), "aggregate_tokens": 40 + 10 * r, "aggregate_uid": None,
               "client_train_accuracy": {task: 0.5 for task in TASKS},
               "client_prompt_tokens": {task: 30 + 5 * r for task in TASKS}} for r in (1, 2)]
    return {"module": "train_hetero_fed", "tasks": TASKS, "clients": TASKS, "aggregate_method": "sum_uid",
            "settings": {"max_steps": 1, "batch_size": 3, "seed": seed}, "zero_shot": {"val": dict(scores),
            "test": dict(scores)}, "rounds": rounds, "best": {"round": 0, "val": val},
            "final_test": {"last": dict(scores), "best": dict(scores)}, "starting_prompt_tokens": 25,
            "llm": {"calls": calls, "cache_hits": hits, "prompt_tokens": 1000, "completion_tokens": 200},
            "wall_seconds": 12.0}


def test_a_task_keeps_its_colour_in_every_plot_of_a_run_and_equal_lines_stay_visible() -> None:
    series = run_series(hetero_results())
    validation = {s.label: s for s in series["validation_accuracy.png"]}
    training = {s.label: s for s in series["client_train_accuracy.png"]}
    for task in TASKS:  # a heterogeneous client is its task
        assert validation[task].colour == training[task].colour
    assert len({s.colour for s in series["validation_accuracy.png"]}) == 4
    assert validation["mean over tasks"].colour == OVERALL
    # The mean and three tasks have equal values: drawn, each gets its own marker and is shifted sideways.
    fig = draw(series["validation_accuracy.png"], xlabel="round", ylabel="acc", title="t")
    drawn = series["validation_accuracy.png"]
    assert len({s.marker for s in drawn}) == 4
    assert len({tuple(s.xs) for s in drawn}) == 4
    assert all(abs(x - r) < 0.2 for s in drawn for x, r in zip(s.xs, [0, 1, 2], strict=True))
    plt.close(fig)


def test_unequal_lines_are_not_shifted() -> None:
    results = hetero_results()
    for entry in results["rounds"]:
        entry["val"] = {"BBH_object_counting": 0.1, "BBH_multistep_arithmetic_two": 0.25, "GSM8K": 0.3, "mean": 0.22}
    drawn = run_series(results)["validation_accuracy.png"]
    fig = draw(drawn, xlabel="round", ylabel="acc", title="t")
    assert all(s.xs == [0, 1, 2] for s in drawn)
    plt.close(fig)


def test_the_prompt_length_plot_starts_at_round_0_with_the_starting_prompt() -> None:
    length = run_series(hetero_results())["prompt_length.png"]
    assert length[0].xs[0] == 0 and length[0].ys == [25, 50, 60]
    assert length[1].ys == [25, 35, 40]


def test_the_legend_sits_outside_the_axes(tmp_path: Path) -> None:
    fig = draw(run_series(hetero_results())["validation_accuracy.png"], xlabel="round", ylabel="acc", title="t")
    fig.canvas.draw()
    legend = fig.axes[0].get_legend().get_window_extent()
    axes = fig.axes[0].get_window_extent()
    assert legend.x0 >= axes.x1  # to the right of the plot area, covering no line
    plt.close(fig)
    paths = plot_run(hetero_results(), tmp_path)
    assert [p.name for p in paths] == ["validation_accuracy.png", "client_train_accuracy.png", "prompt_length.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def _runs(results: list[dict[str, Any]], configs: list[dict[str, Any]]) -> list[Run]:
    return [Run(Path(f"/runs/{i}"), r, run_key(r, c)) for i, (r, c) in enumerate(zip(results, configs, strict=True))]


def _mixed_groups() -> list[Group]:
    hetero = hetero_results()
    homo = copy.deepcopy(hetero) | {"module": "train_homo_fed", "tasks": ["GSM8K"],
                                    "clients": ["client0", "client1", "client2"]}
    for entry in homo["rounds"]:
        entry["val"] = {"GSM8K": 0.2, "mean": 0.2}
    configs = [{"split_sizes": [6, 10, 10]}, {"split_sizes": [12, 20, 20]}]
    return group_runs(_runs([hetero, homo], configs))


def test_report_groups_keep_one_colour_in_every_plot_and_short_labels() -> None:
    groups = _mixed_groups()
    validation = round_series(groups, lambda e: e["val"]["mean"], lambda r: r["zero_shot"]["val"]["mean"])
    length = round_series(groups, lambda e: e["aggregate_tokens"], lambda r: r.get("starting_prompt_tokens"))
    assert [s.colour for s in validation] == [s.colour for s in length]
    assert len({s.colour for s in validation}) == 2
    for s in validation:
        assert "=" not in s.label and "module" not in s.label and len(s.label) < 80
    assert {s.label for s in validation} == {"homo_fed, GSM8K, split 12,20,20",
                                             "hetero_fed, object_counting+multistep_arithmetic_two+GSM8K, split 6,10,10"}
    assert all(s.xs[0] == 0 and s.ys[0] == 25 for s in length)  # prompt length from round 0
    # The two groups have equal validation curves: both drawn, the second shifted.
    fig = draw(validation, xlabel="round", ylabel="acc", title="t")
    assert validation[0].xs != validation[1].xs and validation[0].marker != validation[1].marker
    plt.close(fig)


def test_versus_plot_lines_keep_their_own_colours() -> None:
    results = [hetero_results() for _ in range(4)]
    for r, steps in zip(results, (1, 3, 1, 3), strict=True):
        r["settings"]["max_steps"] = steps
    configs = [{"judge": "string"}, {"judge": "string"}, {"judge": "llm"}, {"judge": "llm"}]
    lines = versus_series(group_runs(_runs(results, configs)), "local_steps")
    assert sorted(s.label for s in lines) == ["judge llm", "judge string"]
    assert len({s.colour for s in lines}) == 2 and all(s.xs == [1, 3] for s in lines)


def _table(markdown: str) -> list[dict[str, str]]:
    lines = markdown.split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_report_counts_calls_made_and_requests_sent_apart_and_distinct_seeds() -> None:
    # Two runs with the same seed (a repeat), the second answered mostly from the shared cache.
    runs = _runs([hetero_results(seed=7, calls=300, hits=20), hetero_results(seed=7, calls=10, hits=310)],
                 [{}, {}])
    row = _table(markdown_report(group_runs(runs)))[0]
    assert row["calls made (cache hits included)"] == "320 ± 0"
    assert row["requests sent"] == "155 ± 205"
    assert row["seeds"] == "1"


def test_config_yaml_of_a_heterogeneous_run_leaves_out_homo_split_num() -> None:
    hetero = resolved_config(parse_args(["--module", "train_hetero_fed", "--task", *TASKS]))
    homo = resolved_config(parse_args(["--module", "train_homo_fed", "--task", "GSM8K", "--homo_split_num", "4"]))
    central = resolved_config(parse_args(["--module", "train_centralized", "--task", "GSM8K"]))
    assert "homo_split_num" not in hetero and "homo_split_num" not in central
    assert homo["homo_split_num"] == 4 and hetero["task"] == TASKS


@pytest.mark.parametrize("module", ["train_hetero_fed", "train_centralized"])
def test_a_resumed_run_without_homo_split_num_parses(module: str, tmp_path: Path) -> None:
    import yaml

    tasks = TASKS if module == "train_hetero_fed" else ["GSM8K"]
    config = resolved_config(parse_args(["--module", module, "--task", *tasks, "--output_dir", str(tmp_path)]))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    args = parse_args(["--resume", "--run_name", "r", "--output_dir", str(tmp_path)])
    assert args.module == module and args.task == tasks


def test_plots_are_drawn_on_demand_into_each_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from utils.reporting.plots import main as draw_plots

    for name in ("seed42", "seed43"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "results.json").write_text(json.dumps(hetero_results()))
    assert draw_plots([str(tmp_path / "sweep")]) == 0  # a folder of runs: each run gets its own plots
    for name in ("seed42", "seed43"):
        drawn = sorted(p.name for p in (tmp_path / "sweep" / name / "plots").iterdir())
        assert drawn == ["client_train_accuracy.png", "prompt_length.png", "validation_accuracy.png"]
    capsys.readouterr()
    assert draw_plots([str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as stopped:  # argparse's own errors are one line too
        draw_plots([])
    assert stopped.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "does not exist" in errors[0] and "RUN_DIR" in errors[1]
