"""The three training modules end to end through main.py, against the real embedded llama.cpp server
and the real BBH / GSM8K files (tiny sizes: SmolLM2-135M answers about 45 tokens a second)."""

from __future__ import annotations

import json
import zipfile

import pytest

from main import main
from utils.reporting.plots import main as draw_plots
from utils.tasks.registry import resolve_task

TINY = ["--split_sizes", "2,2,2", "--max_epochs", "1", "--max_steps", "1", "--batch_size", "1",
        "--max_tokens", "24", "--feedback_max_tokens", "32", "--optimizer_max_tokens", "64",
        "--merge_max_tokens", "64", "--test_engine", "local", "--evaluation_engine", "local"]

MODULES = [
    ("train_centralized", ["BBH_object_counting"], [], ["central"]),
    ("train_homo_fed", ["BBH_word_sorting"], ["--homo_split_num", "2", "--aggregate_method", "summarization"],
     ["client0", "client1"]),
    ("train_hetero_fed", ["BBH_multistep_arithmetic_two", "GSM8K"], ["--aggregate_method", "sum_uid"],
     ["BBH_multistep_arithmetic_two", "GSM8K"]),
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("module", "tasks", "extra", "clients"), MODULES, ids=[m[0] for m in MODULES])
def test_module_runs_on_the_real_server_and_writes_every_output(module, tasks, extra, clients, tmp_path,
                                                                shared_data, local_engine_url, capsys):
    comet_dir = tmp_path / "comet"
    plotted = module == "train_centralized"  # plots as the run ends; the others draw them after
    argv = ["--module", module, "--task", *tasks, "--data_dir", str(shared_data), *TINY, *extra,
            "--output_dir", str(tmp_path), "--run_name", "run", "--comet_mode", "offline",
            "--comet_log_path", str(comet_dir), *(["--plots"] if plotted else [])]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    run = tmp_path / "run"
    if not plotted:
        assert not (run / "plots").exists()
        assert f"python -m utils.reporting.plots {run}" in summary
        assert draw_plots([str(run)]) == 0

    config = (run / "config.yaml").read_text()
    assert f"module: {module}" in config

    results = json.loads((run / "results.json").read_text())
    assert results["module"] == module and results["tasks"] == tasks
    assert results["rounds_completed"] == 1
    for scores in (results["zero_shot"]["val"], results["zero_shot"]["test"], results["rounds"][0]["val"],
                   results["final_test"]["last"], results["final_test"]["best"]):
        assert set(scores) == {*tasks, "mean"} and all(0.0 <= v <= 1.0 for v in scores.values())
    assert results["llm"]["calls"] > 0 and results["llm"]["completion_tokens"] > 0
    assert results["steps"]["total"] == len(clients)  # one step per client
    assert results["wall_seconds"] > 0
    # llama-cpp-python took our schemas: no fallback to tags, and no server died building their grammar
    assert results["structured_output"] == {"mode": "auto", "fallbacks_to_tags": {}}
    assert results["embedded_server_restarts"] == 0

    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    kinds = {e["type"] for e in events}
    assert {"evaluation", "step", "client_update", "aggregate", "round", "finished"} <= kinds
    assert sorted(e["client"] for e in events if e["type"] == "step") == sorted(clients)

    prompts = run / "prompts"
    start = (prompts / "round_000" / "global.txt").read_text()
    assert start.strip() and "Answer:" not in start  # the trained text: instructions only
    for task in tasks:  # served with its own task's format line, once per run
        assert (prompts / "round_000" / f"global.served.{task}.txt").read_text() == \
            start.rstrip("\n") + "\n" + resolve_task(task).format_instruction + "\n"
        assert results["served_prompts"]["last"][task].endswith("\n" + resolve_task(task).format_instruction)
    assert sorted(p.stem for p in (prompts / "round_001").iterdir()) == sorted(
        ["global", *[f"client_{c}" for c in clients]])
    final = (prompts / "round_001" / "global.txt").read_text()
    assert final.strip() == results["final_prompt"].strip()

    assert json.loads((run / "checkpoint.json").read_text())["round"] == 1
    for png in ("validation_accuracy", "client_train_accuracy", "prompt_length"):
        data = (run / "plots" / f"{png}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000

    archives = list(comet_dir.glob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        messages = archive.read("messages.json").decode()
    assert '"metricName": "val/mean"' in messages.replace('":"', '": "')
    assert '"paramName": "module"' in messages.replace('":"', '": "')

    assert "final test" in summary and str(run) in summary
