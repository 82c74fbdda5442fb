"""TGD with momentum (textgrad.optimizer.momentum) and --optimizer tgd_momentum in the training modules.

Expected requests are written out here: the first step is TGD's request byte for byte, later steps put
the last momentum_window values and their feedback in front of it, oldest first. In a run the history
starts empty every round, so --resume from a checkpoint gives what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from scripted_engine import ScriptedEngine

import textgrad as tg
from bench.fake_server import FakeServer
from fedtextgrad_flower.records import experiment_record, read_train_content, train_content
from main import main
from textgrad import prompts
from textgrad.optimizer import MomentumHistory, TextualGradientDescentwithMomentum, TGDMomentum
from utils.config import UsageError, parse_args
from utils.federated.client import Engines, LocalSettings, local_step, round_batches, train_client
from utils.federated.experiment import Client, Experiment
from utils.federated.rounds import run_experiment
from utils.privacy.outbound import ClientPolicy
from utils.reporting.tracking import open_run_log
from utils.tasks.registry import resolve_task
from utils.tasks.synthetic import generate_examples

COUNTING = resolve_task("synthetic_object_counting")
HISTORY_HEAD = "Earlier versions of the"


class Recorder(tg.EngineLM):
    """Answers an optimizer request with the next version "v<n>"; keeps every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        self.requests.append(prompt)
        return f"<IMPROVED_VARIABLE>v{len(self.requests) + 1}</IMPROVED_VARIABLE>"


def steps(optimizer: tg.TGD, variable: tg.Variable, feedback: list[str]) -> None:
    for text in feedback:
        variable.gradients.append(tg.Variable(text, "feedback", requires_grad=False))
        optimizer.step()
        optimizer.zero_grad()


def test_the_first_step_is_tgds_request_and_later_ones_carry_the_window() -> None:
    plain, momentum = Recorder(), Recorder()
    v_plain, v_momentum = tg.Variable("v1", "draft"), tg.Variable("v1", "draft")
    steps(tg.TGD([v_plain], engine=plain), v_plain, ["fb1"])
    optimizer = TGDMomentum([v_momentum], engine=momentum, momentum_window=2)
    steps(optimizer, v_momentum, ["fb1", "fb2", "fb3"])
    assert momentum.requests[0] == plain.requests[0]  # nothing in the past yet: exactly TGD
    assert momentum.requests[2] == (
        "Earlier versions of the draft, oldest first, each with the feedback it got then:\n"
        "Version 1 (2 steps before the current one):\nv1\nFeedback on it:\nfb1\n\n"
        "Version 2 (1 step before the current one):\nv2\nFeedback on it:\nfb2\n\n"
        "Feedback that keeps coming back names what is still wrong; a point the later feedback no longer "
        "raises was fixed, so keep that fix.\n\n"
        "Feedback on the draft:\nfb3\n\nCurrent draft:\nv3\n\n"
        "Reply with the text rewritten to follow the feedback between <IMPROVED_VARIABLE> and "
        "</IMPROVED_VARIABLE>, and nothing else.")
    assert v_momentum.value == "v4" and optimizer.updated == [True]
    # one step later the window of 2 has let go of v1
    steps(optimizer, v_momentum, ["fb4"])
    assert "\nv1\n" not in momentum.requests[3] and "Version 1 (2 steps before the current one):\nv2\n" in \
        momentum.requests[3]


def test_a_window_of_zero_keeps_no_past_and_a_shared_history_outlives_its_optimizer() -> None:
    engine = Recorder()
    variable = tg.Variable("v1", "draft")
    steps(TGDMomentum([variable], engine=engine, momentum_window=0), variable, ["fb1", "fb2"])
    assert not any(HISTORY_HEAD in r for r in engine.requests)

    history = MomentumHistory(3)
    for text in ("fb1", "fb2"):  # a new optimizer (and variable) every step, as FedTextGrad's client makes
        variable = tg.Variable(variable.value, "draft")
        steps(TGDMomentum([variable], engine=engine, momentum_window=3, history=history), variable, [text])
    assert [step.value for step in history.of(0)] == ["v3", "v4"]
    assert [step.feedback for step in history.of(0)] == [("fb1",), ("fb2",)]
    assert "Version 1 (1 step before the current one):\nv3\nFeedback on it:\nfb1" in engine.requests[-1]
    with pytest.raises(ValueError, match="differs from the history's 3"):
        TGDMomentum([variable], engine=engine, momentum_window=2, history=history)
    assert TextualGradientDescentwithMomentum is TGDMomentum  # TextGrad's name


def test_a_reply_without_tags_keeps_the_value_and_is_counted_like_tgd() -> None:
    class NoTags(Recorder):
        def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
            super().generate(prompt, system_prompt)
            return "I would change a few things."

    variable = tg.Variable("v1", "draft")
    optimizer = TGDMomentum([variable], engine=NoTags())
    steps(optimizer, variable, ["fb1", "fb2"])
    assert variable.value == "v1" and optimizer.format_failures == 2
    assert optimizer.failures == ["no_tags"] and optimizer.updated == [False]
    assert [step.value for step in optimizer.history.of(0)] == ["v1", "v1"]  # the past is what was asked


def test_the_oldest_versions_go_first_when_the_window_is_small() -> None:
    class Small(Recorder):
        context_window = 300  # prompt and reply, in words: the three past steps cannot all stay

        def count_tokens(self, text: str) -> int:
            return len(text.split())

    engine = Small()
    variable = tg.Variable("start", "draft")
    optimizer = TGDMomentum([variable], engine=engine, momentum_window=3)
    steps(optimizer, variable, [" ".join(["long"] * 30) + f" fb{i}" for i in range(1, 5)])
    last = engine.requests[-1]
    assert "fb1" not in last and "fb3" in last and "fb4" in last  # the oldest left out, the newest kept
    # No text is cut: every feedback in the request is there whole, its 30 words and its name.
    kept = [f"fb{i}" for i in range(1, 5) if f"fb{i}" in last]
    assert last.split().count("long") == 30 * len(kept) and "cut" not in last
    assert kept == ["fb3", "fb4"] and engine.stats.context_dropped == 3  # 1 version at the 3rd step, 2 at the 4th
    assert len(last.split()) + 75 <= 300  # the reply keeps a quarter of the window


# ---------------------------------------------------------------- in the training modules


def test_the_flags_reach_the_local_step_and_cross_flower_as_settings() -> None:
    args = parse_args(["--module", "train_centralized", "--optimizer", "tgd_momentum", "--momentum_window", "2"])
    assert (args.optimizer, args.momentum_window) == ("tgd_momentum", 2)
    assert (parse_args(["--module", "train_centralized"]).optimizer,
            parse_args(["--module", "train_centralized"]).momentum_window) == ("tgd", 3)
    for bad, message in ((["--optimizer", "adam"], "invalid choice: 'adam'"),
                         (["--momentum_window", "0"], "--momentum_window: must be 1 or more, got 0")):
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_args(["--module", "train_centralized", *bad])
    settings = LocalSettings(optimizer="tgd_momentum", momentum_window=2)
    content = train_content(experiment_record(args, ["client0"]), "client0", "p", 1, settings, ClientPolicy())
    assert read_train_content(content)[4] == settings


def _client_requests(engine: ScriptedEngine) -> list[str]:
    return [prompt for kind, _, prompt in engine.calls if kind == "optimizer"]


def test_the_history_spans_a_clients_steps_of_one_round_and_starts_empty_each_round() -> None:
    engine = ScriptedEngine()
    examples = generate_examples(COUNTING.name, 6, seed=3)
    settings = LocalSettings(max_steps=3, batch_size=2, seed=7, optimizer="tgd_momentum", momentum_window=2)
    for round_index in (1, 2):
        train_client("c0", COUNTING, round_batches(examples, settings, "c0", round_index),
                     COUNTING.starting_prompt(), round_index, Engines(engine, engine), settings)
    requests = _client_requests(engine)
    assert [r.count("\nVersion ") + r.startswith("Version ") for r in requests] == [0, 1, 2, 0, 1, 2]
    assert [r.startswith(HISTORY_HEAD) for r in requests] == [False, True, True] * 2


def test_plain_tgd_steps_send_no_history() -> None:
    engine = ScriptedEngine()
    examples = generate_examples(COUNTING.name, 4, seed=3)
    prompt, _ = local_step(COUNTING.starting_prompt(), examples[:2], COUNTING, Engines(engine, engine),
                           LocalSettings(batch_size=2))
    settings = LocalSettings(max_steps=2)
    train_client("c0", COUNTING, round_batches(examples, settings, "c0", 1), prompt, 1, Engines(engine, engine),
                 settings)
    assert not any(HISTORY_HEAD in r for r in _client_requests(engine))


class VersionCounting(ScriptedEngine):
    """Its edit names how many earlier versions the request showed: a history that crossed a round
    boundary would change the prompts."""

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        if self.kind_of(system_prompt) == "optimizer":
            seen = prompt.count("Feedback on it:")
            self._improve = lambda current, n=seen: current.strip() + f" Count carefully ({n} seen)."
        return super().generate(prompt, system_prompt, **kwargs)


def _experiment(rounds: int) -> Experiment:
    examples = generate_examples(COUNTING.name, 8, seed=3)
    clients = [Client(f"client{i}", COUNTING, examples[i * 4:(i + 1) * 4]) for i in range(2)]
    sets = {COUNTING.name: (COUNTING, generate_examples(COUNTING.name, 4, seed=1))}
    return Experiment(module="test", tasks=[COUNTING], clients=clients, val_sets=sets, test_sets=sets,
                      aggregate_method="concat", rounds=rounds, clients_per_round=2, run_larger_model=False,
                      settings=LocalSettings(max_steps=2, batch_size=2, seed=7, optimizer="tgd_momentum"))


def _run(run_dir: Path, rounds: int, resume: bool = False) -> dict[str, Any]:
    engine = VersionCounting(answer=lambda q, s: "Answer: 3" if s and "seen" in s else "Answer: 0")
    return run_experiment(_experiment(rounds), Engines(engine, engine),
                          open_run_log(run_dir, "disabled", "p", run_dir / "comet"), resume=resume)


def test_resume_after_a_round_gives_the_uninterrupted_runs_prompts(tmp_path: Path) -> None:
    straight = _run(tmp_path / "straight", 2)
    _run(tmp_path / "resumed", 1)
    resumed = _run(tmp_path / "resumed", 2, resume=True)
    keys = ("final_prompt", "best", "final_test", "steps", "format_failures")
    assert {k: resumed[k] for k in keys} == {k: straight[k] for k in keys}
    # each round's second step saw one version, its first none: "(0 seen)" and "(1 seen)" only
    assert set(re.findall(r"\((\d) seen\)", straight["final_prompt"])) == {"0", "1"}


@pytest.mark.parametrize("module", ["train_centralized", "train_homo_fed", "train_hetero_fed"])
def test_every_module_runs_with_tgd_momentum(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []
    real = TGDMomentum._request

    def spy(self: TGDMomentum, index: int, variable: tg.Variable) -> Any:
        template, fields = real(self, index, variable)
        asked.append(template == prompts.MOMENTUM_TEMPLATE)
        return template, fields

    monkeypatch.setattr(TGDMomentum, "_request", spy)
    tasks = ["synthetic_object_counting", "synthetic_word_sorting"] if module == "train_hetero_fed" else [
        "synthetic_object_counting"]
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        code = main(["--module", module, "--task", *tasks, "--split_sizes", "4,2,2", "--homo_split_num", "2",
                     "--max_epochs", "1", "--max_steps", "2", "--batch_size", "2", "--aggregate_method", "concat",
                     "--optimizer", "tgd_momentum", "--momentum_window", "1", "--test_engine", "vllm-fake-model",
                     "--evaluation_engine", "vllm-fake-model", "--comet_mode", "disabled", "--no_cache",
                     "--output_dir", str(tmp_path), "--run_name", "run"])
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    clients = 1 if module == "train_centralized" else 2
    assert results["settings"]["optimizer"] == "tgd_momentum" and results["settings"]["momentum_window"] == 1
    assert results["steps"]["total"] == 2 * clients
    assert sorted(asked) == [False] * clients + [True] * clients  # per client: step 1 plain, step 2 with history
    assert "optimizer_no_tags" in results["format_failures"]


def test_tgd_momentum_on_the_real_embedded_server(shared_data: Path, local_engine_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    real = TGDMomentum._request

    def spy(self: TGDMomentum, index: int, variable: tg.Variable) -> Any:
        template, fields = real(self, index, variable)
        asked.append(template)
        return template, fields

    monkeypatch.setattr(TGDMomentum, "_request", spy)
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    assert main(["--module", "train_centralized", "--task", "BBH_object_counting", "--data_dir", str(shared_data),
                 "--split_sizes", "2,1,1", "--max_epochs", "1", "--max_steps", "2", "--batch_size", "1",
                 "--max_tokens", "24", "--feedback_max_tokens", "32", "--optimizer_max_tokens", "64",
                 "--optimizer", "tgd_momentum", "--momentum_window", "2", "--test_engine", "local",
                 "--evaluation_engine", "local", "--do_not_run_larger_model", "--comet_mode", "disabled",
                 "--output_dir", str(tmp_path), "--run_name", "run"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"]["total"] == 2 and results["settings"]["optimizer"] == "tgd_momentum"
    assert asked == [prompts.OPTIMIZER_TEMPLATE, prompts.MOMENTUM_TEMPLATE]
    assert results["llm"]["calls"] > 0 and results["embedded_server_restarts"] == 0

