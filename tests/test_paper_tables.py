"""The paper's tables in the report (utils.reporting.paper_tables), built from small fake run folders whose
numbers are chosen so that every cell can be worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from utils.reporting.report import build_report, main

OC, MA, GSM = "BBH_object_counting", "BBH_multistep_arithmetic_two", "GSM8K"


def write_run(root: Path, name: str, *, module: str, tasks: list[str], test: dict[str, float], seed: int,
              method: str | None = None, steps: int = 3, clients: int = 1, batch: int = 3, judge: str = "string",
              last_round: dict[str, Any] | None = None) -> None:
    """A run folder with the results.json and config.yaml fields the report reads."""
    mean = sum(test.values()) / len(test)
    rounds = [{"round": 1, "val": {"mean": 0.5}, "aggregate_tokens": 40, "aggregate_uid": None,
               "client_train_accuracy": {}, "client_prompt_tokens": {}, "aggregation_failure": None},
              {"round": 2, "val": {"mean": 0.5}, "aggregate_tokens": 50, "aggregate_uid": None,
               "client_train_accuracy": {}, "client_prompt_tokens": {}, "aggregation_failure": None,
               **(last_round or {})}]
    results = {"module": module, "tasks": tasks, "aggregate_method": method, "judge": judge,
               "clients": [f"c{i}" for i in range(clients)],
               "settings": {"max_steps": steps, "batch_size": batch, "seed": seed},
               "zero_shot": {"val": {"mean": 0.1}, "test": {"mean": 0.1}}, "best": {"round": 1, "val": 0.5},
               "final_test": {"last": {"mean": mean}, "best": {**test, "mean": mean}}, "rounds": rounds,
               "llm": {"calls": 10, "cache_hits": 0, "prompt_tokens": 100, "completion_tokens": 10},
               "wall_seconds": 1.0, "starting_prompt_tokens": 12}
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "max_steps": steps, "judge": judge}))


def section(markdown: str, title: str) -> list[dict[str, str]]:
    """The rows of the table under `### title`, as {column: cell}."""
    lines = markdown.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def test_centralized_vs_federated_with_the_drop_per_task(tmp_path: Path) -> None:
    # Centralized: OC 0.8 and 0.6 over two seeds (0.700 ± 0.141), MA 0.5 and 0.5, GSM8K 0.3 and 0.1.
    for seed, (oc, ma, gsm) in ((1, (0.8, 0.5, 0.3)), (2, (0.6, 0.5, 0.1))):
        for task, acc in ((OC, oc), (MA, ma), (GSM, gsm)):
            write_run(tmp_path / "centralized", f"{task}-{seed}", module="train_centralized", tasks=[task],
                      test={task: acc}, seed=seed)
            # Homogeneous, summarization: 0.1 below the baseline on every run.
            write_run(tmp_path / "homo_fed", f"{task}-summ-{seed}", module="train_homo_fed", tasks=[task],
                      test={task: round(acc - 0.1, 3)}, seed=seed, method="summarization", clients=3)
        # Heterogeneous, one run serving all three tasks.
        write_run(tmp_path / "hetero_fed", f"hetero-{seed}", module="train_hetero_fed", tasks=[OC, MA, GSM],
                  test={OC: 0.4, MA: 0.2, GSM: 0.0 + seed / 10}, seed=seed, method="sum_uid", clients=3)
    markdown, _, _ = build_report([tmp_path / "centralized", tmp_path / "homo_fed", tmp_path / "hetero_fed"])
    rows = {row["setting"]: row for row in section(markdown, "Centralized vs federated")}
    assert list(rows) == ["centralized", "homogeneous (3 clients), summarization", "heterogeneous, sum_uid"]
    assert rows["centralized"] == {"setting": "centralized", OC: "0.700 ± 0.141", MA: "0.500 ± 0.000",
                                   GSM: "0.200 ± 0.141"}
    homo = rows["homogeneous (3 clients), summarization"]
    assert (homo[OC], homo[MA], homo[GSM]) == ("0.600 ± 0.141 (-0.100)", "0.400 ± 0.000 (-0.100)",
                                               "0.100 ± 0.141 (-0.100)")
    hetero = rows["heterogeneous, sum_uid"]
    # OC 0.4 vs 0.7: -0.300; MA 0.2 vs 0.5: -0.300; GSM8K 0.1 and 0.2 (0.150 ± 0.071) vs 0.2: -0.050.
    assert (hetero[OC], hetero[MA], hetero[GSM]) == ("0.400 ± 0.000 (-0.300)", "0.200 ± 0.000 (-0.300)",
                                                     "0.150 ± 0.071 (-0.050)")
    assert "Scoring: our deterministic grader (--judge string)." in markdown
    # Centralized and federated runs differ in clients, but no setting makes a curve: no versus table.
    assert "### Accuracy vs" not in markdown


def test_the_aggregation_table_with_length_complexity_and_fallbacks(tmp_path: Path) -> None:
    measures = {"concat": (90, 4.0, 0.40, 2, 0), "summarization": (60, 4.2, 0.55, 1, 1),
                "sum_uid": (50, 4.3, 0.60, 0, 0)}
    for method, (tokens, entropy, ratio, fallbacks, overflows) in measures.items():
        for seed, acc in ((1, 0.5), (2, 0.7)):
            last = {"aggregate_tokens": tokens + seed, "aggregate_complexity": {"entropy": entropy,
                    "compression_ratio": ratio}, "aggregate_uid": {"mean": 2.0 + seed, "variance": 1.0, "max": 6.0,
                                                                   "tokens": 10},
                    "aggregation_failure": "truncated" if fallbacks == 2 else
                    ("context_overflow" if overflows else ("no_tags" if fallbacks else None))}
            write_run(tmp_path, f"{method}-{seed}", module="train_homo_fed", tasks=[OC], test={OC: acc}, seed=seed,
                      method=method, clients=3, last_round=last)
            if fallbacks == 2:  # a second fallback, in round 1 of the concat runs
                results = json.loads((tmp_path / f"{method}-{seed}" / "results.json").read_text())
                results["rounds"][0]["aggregation_failure"] = "empty"
                (tmp_path / f"{method}-{seed}" / "results.json").write_text(json.dumps(results))
    markdown, _, _ = build_report([tmp_path])
    rows = section(markdown, "Aggregation methods")
    assert [row["aggregation"] for row in rows] == ["concat", "summarization", "sum_uid"]
    concat, summ, uid = rows
    assert concat["test (best)"] == "0.600 ± 0.141"
    assert (concat["final prompt tokens"], summ["final prompt tokens"], uid["final prompt tokens"]) == (
        "92 ± 1", "62 ± 1", "52 ± 1")  # 91 and 92, 61 and 62, 51 and 52
    assert (concat["entropy (bits/char)"], uid["compression ratio"]) == ("4.00 ± 0.00", "0.600 ± 0.000")
    assert uid["UID mean"] == "3.50 ± 0.71" and uid["UID var"] == "1.00 ± 0.00"  # 3.0 and 4.0
    # concat: "empty" in round 1 and "truncated" in round 2 fell back (2 per run); summarization: one overflow.
    assert (concat["merges fell back"], concat["merges overflowed"]) == ("2.0 ± 0.0", "0.0 ± 0.0")
    assert (summ["merges fell back"], summ["merges overflowed"]) == ("0.0 ± 0.0", "1.0 ± 0.0")


def test_accuracy_against_local_steps_clients_and_batch_size(tmp_path: Path) -> None:
    for steps, acc in ((1, 0.2), (3, 0.4), (10, 0.6)):
        for seed in (1, 2):
            write_run(tmp_path, f"steps{steps}-{seed}", module="train_homo_fed", tasks=[OC], seed=seed,
                      test={OC: acc + (0.1 if seed == 2 else 0.0)}, method="sum_uid", clients=3, steps=steps)
            write_run(tmp_path, f"gsm-steps{steps}-{seed}", module="train_homo_fed", tasks=[GSM], seed=seed,
                      test={GSM: acc / 2}, method="sum_uid", clients=3, steps=steps)
    markdown, _, _ = build_report([tmp_path])
    rows = section(markdown, "Accuracy vs local steps")
    # Numeric order (1, 3, 10, not "1", "10", "3"); a column per task.
    assert [row["local steps"] for row in rows] == ["1", "3", "10"]
    assert [row["object_counting"] for row in rows] == ["0.250 ± 0.071", "0.450 ± 0.071", "0.650 ± 0.071"]
    assert [row["GSM8K"] for row in rows] == ["0.100 ± 0.000", "0.200 ± 0.000", "0.300 ± 0.000"]
    assert "### Accuracy vs clients" not in markdown and "### Accuracy vs batch size" not in markdown
    assert "### Centralized vs federated" not in markdown and "### Aggregation methods" not in markdown


def test_the_report_says_which_judge_scored_the_runs(tmp_path: Path, capsys: Any) -> None:
    write_run(tmp_path, "a", module="train_centralized", tasks=[OC], test={OC: 0.5}, seed=1)
    write_run(tmp_path, "b", module="train_centralized", tasks=[OC], test={OC: 0.5}, seed=1, judge="llm")
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert ("Scoring: our deterministic grader (--judge string) and an LLM judge (--judge llm) (runs differ: see "
            "the judge column).") in report
    assert "| batch | judge | seeds |" in report  # the column that tells the runs apart
    capsys.readouterr()
