"""What a new user meets first: `--help` with every flag's help and default, `--rounds` (the reference's
`--max_epochs` kept), keys (none for `--estimate` or a server of one's own at *_BASE_URL; the variable
to set when one is missing) and the message when a server gives no log-probabilities for UID measures."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import pytest

from main import main
from textgrad.engine import get_engine
from textgrad.serving.backends import route
from utils.config import UsageError, build_parser, parse_args
from utils.reporting.uid import uid_measures

TINY = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
        "--comet_mode", "disabled"]


# ---------------------------------------------------------------- --help


def test_every_flag_has_help_and_says_its_default() -> None:
    parser = build_parser()
    formatter = parser._get_formatter()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 49
    for action in flags:
        text = formatter._get_help_string(action)
        assert action.help, f"{action.option_strings[0]} has no help"
        assert "default" in text or "required" in text, f"{action.option_strings[0]}: {text!r} names no default"
    shown = parser.format_help()
    assert "--rounds N, --max_epochs N" in shown
    assert "(default: off)" in shown  # a switch's default
    assert "the reference code's name for it (default: 3)" in " ".join(shown.split())
    malicious = next(a for a in flags if a.dest == "malicious_clients")
    assert formatter._get_help_string(malicious).endswith("(default: 0)")  # 0 is a default too, not "unset"


def test_help_groups_are_the_ones_promised() -> None:
    groups = [g.title for g in build_parser()._action_groups]
    assert groups[2:] == ["run", "federated", "engines", "outputs", "estimate", "robustness and privacy"]


# ---------------------------------------------------------------- --rounds and --max_epochs


@pytest.mark.parametrize("flags", [["--rounds", "5"], ["--max_epochs", "5"], ["--rounds", "5", "--max_epochs", "5"],
                                   ["--max_epochs", "2", "--rounds=5", "--max_epochs", "5"]])
def test_rounds_is_the_flag_and_max_epochs_its_reference_name(flags: list[str], tmp_path: Path) -> None:
    assert parse_args([*TINY, "--output_dir", str(tmp_path), *flags]).max_epochs == 5


def test_rounds_and_max_epochs_with_different_values_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (--estimate: were the guard gone, the test would end at once instead of training)
    assert main([*TINY, "--output_dir", str(tmp_path), "--rounds", "2", "--max_epochs", "3", "--estimate"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the command line gives --rounds 2 and --max_epochs 3: they name one setting, so give "
                   "one of them\n")
    assert not any(tmp_path.iterdir())


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text("module: train_homo_fed\ntask: synthetic_object_counting\n" + text, encoding="utf-8")
    return str(path)


def test_a_config_may_name_rounds_either_way_and_the_command_line_still_wins(tmp_path: Path) -> None:
    out = ["--output_dir", str(tmp_path)]
    assert parse_args(["--config", config(tmp_path, "rounds: 4\n"), *out]).max_epochs == 4
    assert parse_args(["--config", config(tmp_path, "max_epochs: 4\nrounds: 4\n"), *out]).max_epochs == 4
    assert parse_args(["--config", config(tmp_path, "rounds: 4\n"), "--max_epochs", "2", *out]).max_epochs == 2
    with pytest.raises(UsageError, match=r"gives max_epochs: 4 and rounds: 2: they name one setting"):
        parse_args(["--config", config(tmp_path, "max_epochs: 4\nrounds: 2\n"), *out])
    with pytest.raises(UsageError, match="unknown key 'h'"):  # a flag's short name is no config key
        parse_args(["--config", config(tmp_path, "h: true\n"), *out])


# ---------------------------------------------------------------- keys


@pytest.fixture
def no_openai(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_estimate_needs_no_api_key(no_openai: pytest.MonkeyPatch, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    flags = [*TINY, "--output_dir", str(tmp_path), "--test_engine", "gpt-4o-mini", "--evaluation_engine", "gpt-4o"]
    assert main([*flags, "--estimate"]) == 0
    assert "money     total $" in capsys.readouterr().out
    assert main(flags) == 2  # the run itself does
    err = capsys.readouterr().err
    assert err == ("error: --evaluation_engine 'gpt-4o' is served by https://api.openai.com/v1 and needs "
                   "OPENAI_API_KEY, which is not set: export OPENAI_API_KEY=<your key>, or set OPENAI_BASE_URL to an "
                   "OpenAI-compatible server of your own (it may be keyless)\n")
    assert not any(tmp_path.iterdir())


def test_a_server_of_ones_own_at_openai_base_url_may_be_keyless(no_openai: pytest.MonkeyPatch,
                                                                  make_fake_server: Any) -> None:
    server = make_fake_server(models=("my-model",))
    no_openai.setenv("OPENAI_BASE_URL", server.base_url)
    assert route("my-model").api_key == "none"  # the SDK needs some key; the server asks for none
    assert get_engine("my-model").generate("hi") == "reply from my-model to: hi"
    no_openai.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1/")  # OpenAI itself: a key it is
    with pytest.raises(ValueError, match="needs OPENAI_API_KEY, which is not set"):
        route("gpt-4o")


@pytest.mark.parametrize(("name", "variable"), [("vllm-m", "VLLM"), ("ollama-m", "OLLAMA"), ("sglang-m", "SGLANG")])
def test_self_hosted_backends_need_no_key(name: str, variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(f"{variable}_API_KEY", raising=False)
    assert route(name).api_key  # the backend's placeholder


# ---------------------------------------------------------------- UID measures


class NoLogprobs:
    """An engine of the vllm backend whose server answered the echo request without log-probabilities."""

    name = "vllm-fake"
    backend = argparse.Namespace(kind="vllm")

    def prompt_logprobs(self, text: str) -> Any:
        return {}["logprobs"]


def test_uid_unavailable_says_which_backend_why_and_which_backends_give_them(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert uid_measures("Count each item once.", NoLogprobs()) is None
    assert caplog.messages == ["UID measures not available from vllm-fake (a vllm server): it returned no prompt "
                               "log-probabilities (KeyError: 'logprobs'); the backends that give them: local, "
                               "vllm-<model>"]
