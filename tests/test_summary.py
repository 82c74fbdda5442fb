"""The summary a run prints at its end (utils.reporting.run_summary): the prompt before and after with the
files holding them whole, the accuracy change on its number of questions, and one plain sentence when no
round improved on the starting prompt, with the command that runs the experiment on capable models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from test_training_logic import homo_clients, make_experiment, run

from utils.config import default_run_config
from utils.reporting.run_summary import print_summary, rerun_command
from utils.tasks.registry import STARTING_INSTRUCTIONS, resolve_task

COUNTING = resolve_task("synthetic_object_counting")
QUICKSTART = replace(default_run_config(), module="train_homo_fed", config="configs/quickstart.yaml")
REWRITE = "Count each listed item once, then add them up.\nCheck the sum before you answer."


def summary(tmp_path: Path, engine: ScriptedEngine, capsys: pytest.CaptureFixture[str], args=QUICKSTART) -> list[str]:
    exp = make_experiment([COUNTING], homo_clients(), rounds=2, method="summarization")
    exp = replace(exp, split_sizes={COUNTING.name: {"train": 18, "val": 4, "test": 4}})
    results = run(tmp_path, exp, engine)
    capsys.readouterr()
    print_summary(results, tmp_path / "run", args)
    return capsys.readouterr().out.splitlines()


def line(lines: list[str], head: str) -> str:
    found = [text for text in lines if text.startswith(head)]
    assert len(found) == 1, (head, lines)
    return found[0]


def test_a_run_that_improved_nothing_says_so_with_the_command_for_a_capable_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = ScriptedEngine(answer=lambda q, s: "Answer: -1", improve=lambda cur: REWRITE)  # never right
    lines = summary(tmp_path, wrong, capsys)
    run_dir = tmp_path / "run"
    assert line(lines, "prompt before") == (f'prompt before  "{STARTING_INSTRUCTIONS[:100].rstrip()}" ... '
                                            f"({run_dir / 'prompts' / 'round_000' / 'global.txt'})")
    # The final prompt's first line; "..." says the file holds more.
    assert line(lines, "prompt after") == (f'prompt after   "Count each listed item once, then add them up." ... '
                                           f"({run_dir / 'prompts' / 'round_002' / 'global.txt'})")
    assert line(lines, "change") == ("change         test 0.000 -> 0.000 (+0.000) with the final prompt, "
                                     "0.000 -> 0.000 (+0.000) with the best, on 4 questions")
    verdict = line(lines, "result")
    assert lines[-1] == verdict  # the summary's last line
    assert verdict.startswith("result         no round improved on the starting prompt (validation 0.000 on "
                              "4 questions, never beaten); the packaged 135M model is a smoke test")
    assert ("python main.py --config configs/quickstart.yaml --test_engine gpt-4o-mini --evaluation_engine gpt-4o"
            in verdict)
    assert not any(text.startswith("best prompt") for text in lines)  # the best is the starting prompt


def test_a_run_that_improved_shows_the_change_and_no_verdict(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Right only under the rewrite: 0 of 4 test questions before, 4 of 4 after.
    exp = make_experiment([COUNTING], homo_clients(), rounds=2, method="summarization")
    targets = {e.question: e.target for _, examples in [*exp.val_sets.values(), *exp.test_sets.values()]
               for e in examples} | {e.question: e.target for c in exp.clients for e in c.examples}
    engine = ScriptedEngine(improve=lambda cur: REWRITE,
                            answer=lambda q, s: f"Answer: {targets[q]}" if "Count each" in (s or "") else "Answer: -1")
    lines = summary(tmp_path, engine, capsys)
    assert not any(text.startswith("result") for text in lines)
    assert line(lines, "change") == ("change         test 0.000 -> 1.000 (+1.000) with the final prompt, "
                                     "0.000 -> 1.000 (+1.000) with the best, on 4 questions")


def test_the_verdict_of_a_run_on_capable_engines_suggests_no_server(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = replace(QUICKSTART, test_engine="vllm-qwen", evaluation_engine="gpt-4o")
    verdict = line(summary(tmp_path, ScriptedEngine(answer=lambda q, s: "Answer: -1"), capsys, args), "result")
    assert "--rounds" in verdict and "python main.py" not in verdict


def test_the_rerun_command_repeats_the_experiment_on_capable_models() -> None:
    args = replace(default_run_config(), module="train_hetero_fed", task=["BBH_navigate", "GSM8K"],
                   data_dir="../shared/data", split_sizes=(12, 20, 20))
    assert rerun_command(args) == ("python main.py --module train_hetero_fed --task BBH_navigate GSM8K --data_dir "
                                   "../shared/data --split_sizes 12,20,20 --test_engine gpt-4o-mini "
                                   "--evaluation_engine gpt-4o")
    with_config = rerun_command(replace(args, config="my config.yaml"))
    assert with_config.startswith("python main.py --config 'my config.yaml' --test_engine")
