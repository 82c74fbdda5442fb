"""RunConfig: one typed, frozen field per main.py flag, built once by parse_args."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fedtextgrad_flower.records import EXPERIMENT_KEYS, experiment_from_record, experiment_record
from utils.config import build_parser, default_run_config, parse_args
from utils.run_config import RunConfig, resolved_config

TINY = ["--task", "synthetic_object_counting", "--split_sizes", "3,3,3"]


def test_the_fields_are_the_parsers_flags_in_its_order() -> None:
    dests = [action.dest for action in build_parser()._actions if action.dest != "help"]
    assert [field.name for field in dataclasses.fields(RunConfig)] == dests
    assert dests[:3] == ["module", "config", "task"] and dests[-1] == "screen_margin"


def test_a_flag_the_class_does_not_know_or_lacks_fails_at_once() -> None:
    namespace = build_parser().parse_args([])
    with pytest.raises(TypeError, match="unexpected keyword argument 'new_flag'"):
        RunConfig.from_namespace(argparse.Namespace(**vars(namespace), new_flag=1))
    del namespace.seed
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'seed'"):
        RunConfig.from_namespace(namespace)


def test_defaults_come_from_the_parser() -> None:
    defaults = default_run_config()
    assert (defaults.module, defaults.task, defaults.batch_size, defaults.max_tokens) == (
        None, ["BBH_object_counting"], 3, 512)
    assert (defaults.split_sizes, defaults.data_dir, defaults.price_in) == (None, None, None)


def test_a_yaml_config_and_the_command_line_give_typed_values_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("module: train_homo_fed\ntask: [GSM8K]\nmax_steps: 5\nsplit_sizes: [12, 20, 20]\n"
                      "dirichlet_alpha: 0.5\nproximal_update: true\nprice_in: [2.5]\nclients_per_round: 2\n")
    args = parse_args(["--config", str(config), "--max_steps", "7", "--output_dir", str(tmp_path)])
    assert isinstance(args, RunConfig)
    assert args.config == str(config) and args.module == "train_homo_fed"
    assert args.max_steps == 7  # the command line beats the file
    assert args.task == ["GSM8K"]
    assert args.split_sizes == (12, 20, 20) and isinstance(args.split_sizes, tuple)
    assert args.dirichlet_alpha == 0.5 and isinstance(args.dirichlet_alpha, float)
    assert args.proximal_update is True and args.resume is False
    assert args.price_in == ["2.5"] and args.clients_per_round == 2
    assert (args.batch_size, args.run_name) == (3, None)  # not given: the parser's defaults


def test_a_run_config_is_frozen_and_changes_by_replace() -> None:
    args = parse_args(["--module", "train_centralized", *TINY])
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.run_name = "mine"  # type: ignore[misc]
    named = dataclasses.replace(args, run_name="mine")
    assert (named.run_name, args.run_name) == ("mine", None)


def test_the_experiment_record_round_trips_its_keys_and_leaves_the_rest_at_the_defaults(tmp_path: Path) -> None:
    args = parse_args(["--module", "train_homo_fed", *TINY, "--data_dir", str(tmp_path), "--seed", "7",
                       "--homo_split_num", "2", "--partition", "dirichlet", "--dirichlet_alpha", "0.3",
                       "--test_engine", "ollama-llama3", "--judge", "llm", "--cache_dir", str(tmp_path / "cache"),
                       "--no_cache", "--max_concurrency", "5", "--batch_size", "2", "--max_tokens", "100",
                       "--leak_guard", "off", "--output_dir", str(tmp_path), "--top_p", "0.99", "merge=1",
                       "--temperature", "judge=0.5"])
    experiment = experiment_from_record(experiment_record(args, ["client0", "client1"]))
    assert experiment.client_ids == ["client0", "client1"]
    config = experiment.config
    assert {key: getattr(config, key) for key in EXPERIMENT_KEYS} == {
        "module": "train_homo_fed", "task": ["synthetic_object_counting"], "data_dir": str(tmp_path.resolve()),
        "split_sizes": (3, 3, 3), "seed": 7, "homo_split_num": 2, "partition": "dirichlet", "dirichlet_alpha": 0.3,
        "test_engine": "ollama-llama3", "evaluation_engine": "local", "judge": "llm",
        "cache_dir": str((tmp_path / "cache").resolve()), "no_cache": True, "max_concurrency": 5,
        "temperature": ["judge=0.5"], "top_p": ["0.99", "merge=1"]}  # a client's engines sample as the server's
    # Flags that do not cross the wire are the parser's defaults on the client.
    assert (config.batch_size, config.max_tokens, config.leak_guard, config.output_dir) == (3, 512, "redact", "logs")
    assert (config.structured_output, config.local_servers, config.max_context) == ("auto", None, None)


def test_an_experiment_without_paths_or_sizes_gets_none_for_them() -> None:
    args = parse_args(["--module", "train_homo_fed", "--task", "synthetic_word_sorting"])
    config = experiment_from_record(experiment_record(args, ["client0", "client1", "client2"])).config
    assert (config.data_dir, config.cache_dir, config.split_sizes) == (None, None, None)
    assert config.task == ["synthetic_word_sorting"]


def test_config_yaml_keeps_the_parsers_order_lists_tuples_and_redacts(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    args = parse_args(["--module", "train_hetero_fed", "--task", "GSM8K", "synthetic_word_sorting",
                       "--split_sizes", "12,20,20", "--run_name", "x-sk-test-0123456789", "--output_dir",
                       str(tmp_path)])
    config = resolved_config(args)
    assert list(config)[:6] == ["module", "config", "task", "evaluation_engine", "test_engine", "batch_size"]
    assert list(config)[-3:] == ["robust_aggregation", "screen_size", "screen_margin"]
    assert "homo_split_num" not in config and len(config) == len(dataclasses.fields(RunConfig)) - 1
    assert config["task"] == ["GSM8K", "synthetic_word_sorting"]
    assert config["split_sizes"] == [12, 20, 20]
    assert config["run_name"] == "<redacted>"
    assert (config["module"], config["config"], config["seed"], config["screen_margin"]) == (
        "train_hetero_fed", None, 42, 0.2)


def test_the_resume_line_after_ctrl_c_names_the_generated_run_folder(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import main
    from textgrad.serving.interrupt import StopSignals
    from utils.federated import runner

    opened: list[Path] = []

    def open_then_ctrl_c(run_dir: Path, *args: object, **kwargs: object) -> None:
        opened.append(run_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "make_engines", lambda args, check=True: None)
    monkeypatch.setattr(runner, "open_run_log", open_then_ctrl_c)
    exit_lines: list[Callable[[], str]] = []
    monkeypatch.setattr(StopSignals, "install", lambda watch: exit_lines.append(watch.exit_line))
    args = parse_args(["--module", "train_centralized", *TINY, "--output_dir", str(tmp_path),
                       "--comet_mode", "disabled"])
    assert args.run_name is None

    assert main.run(args) == 130
    [run_dir] = opened
    assert re.fullmatch(r"train_centralized-synthetic_object_counting-central-seed42-\d{8}-\d{6}", run_dir.name)
    expected = (f"interrupted: continue with python main.py --resume --run_name {run_dir.name} "
                f"--output_dir {tmp_path}")
    assert capsys.readouterr().err.splitlines()[-1] == expected
    assert exit_lines[0]() == expected  # what a second Ctrl-C, or the grace running out, ends with
