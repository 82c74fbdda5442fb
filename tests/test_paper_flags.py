"""The flags for what the reference code fixes differently: sampling per role (--temperature, --top_p: what each
role's requests carry, the cache keys them, the run records it), --initial_prompt TEXT or @FILE, and --judge llm
for every task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fake_server import FakeServer
from bench.fake_server.replies import request_kind
from main import main
from textgrad.engine import get_engine
from textgrad.serving.runtime import Runtime
from utils.config import UsageError, parse_args
from utils.federated.runner import make_engines
from utils.federated.sampling import ROLES, Sampling, role_sampling


def test_one_value_sets_every_role_and_role_entries_win_in_order() -> None:
    roles = role_sampling(["0.3", "optimizer=0.9"], ["0.99", "merge=0.5", "merge=0.7"])
    assert roles["answer"] == Sampling(0.3, 0.99) and roles["feedback"] == Sampling(0.3, 0.99)
    assert roles["optimizer"] == Sampling(0.9, 0.99)
    assert roles["merge"] == Sampling(0.3, 0.7)  # the later entry for a role wins
    assert role_sampling(None, None) == {role: Sampling(0.0, None) for role in ROLES}
    # Entries for one role leave the others at our defaults.
    assert role_sampling(["judge=1"], None)["answer"] == Sampling(0.0, None)


@pytest.mark.parametrize(("flags", "complaint"), [
    (["--top_p", "0"], "greater than 0 and at most 1"),
    (["--top_p", "1.01"], "greater than 0 and at most 1"),
    (["--temperature", "2.5"], "between 0 and 2"),
    (["--temperature", "-0.1"], "between 0 and 2"),
    (["--temperature", "inf"], "between 0 and 2"),
    (["--top_p", "judge=x"], "expected a number or ROLE=number"),
    (["--top_p", "critic=0.5"], "unknown role 'critic'"),
])
def test_bad_sampling_values_are_usage_errors(flags: list[str], complaint: str) -> None:
    # (tests/test_bad_input.py runs two of them as processes: one line, exit code 2, nothing written)
    with pytest.raises(UsageError, match=complaint):
        parse_args(["--module", "train_centralized", *flags])


def test_the_edges_of_the_ranges_are_accepted() -> None:
    args = parse_args(["--module", "train_centralized", "--top_p", "1", "judge=0.01", "--temperature", "2",
                       "answer=0"])
    assert role_sampling(args.temperature, args.top_p)["judge"] == Sampling(2.0, 0.01)


def test_the_initial_prompt_is_a_text_or_a_file(tmp_path: Path) -> None:
    prompt = tmp_path / "start.txt"
    prompt.write_text("  Think step by step.\nCheck each result.\n\n", encoding="utf-8")
    args = parse_args(["--module", "train_centralized", "--initial_prompt", f"@{prompt}"])
    assert args.initial_prompt == "Think step by step.\nCheck each result."
    assert parse_args(["--module", "train_centralized", "--initial_prompt", "Be exact."]).initial_prompt == "Be exact."
    assert parse_args(["--module", "train_centralized"]).initial_prompt is None  # ours, TaskSpec.starting_prompt


def test_each_role_sends_its_own_sampling_and_the_cache_keys_it(monkeypatch: pytest.MonkeyPatch, fake_server,
                                                                  isolated_cache_dir, runtime: Runtime) -> None:
    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    args = parse_args(["--module", "train_centralized", "--test_engine", "vllm-model-a", "--evaluation_engine",
                       "vllm-model-b", "--judge", "llm", "--top_p", "0.99", "optimizer=0.5", "--temperature",
                       "merge=0.7"])
    engines = make_engines(args, check=False)
    sent = {}
    for role, engine in engines.by_role().items():
        engine.generate(f"a request of the {role} role", max_tokens=8)
        sent[role] = fake_server.chat_requests[-1]
    assert {role: (body["model"], body["temperature"], body.get("top_p")) for role, body in sent.items()} == {
        "answer": ("model-a", 0.0, 0.99), "feedback": ("model-b", 0.0, 0.99), "optimizer": ("model-b", 0.0, 0.5),
        "merge": ("model-b", 0.7, 0.99), "judge": ("model-b", 0.0, 0.99)}
    # A view shares its engine's counters and cache: the same request at another top_p is not a cache hit,
    # the same request at the same top_p is.
    base = get_engine("vllm-model-b")
    assert engines.writer("optimizer").stats is base.stats and engines.writer("optimizer") is not base
    count = fake_server.chat_count
    engines.writer("feedback").generate("a request of the optimizer role", max_tokens=8)
    assert fake_server.chat_count == count + 1  # top_p 0.99, not the optimizer's 0.5: sent
    engines.writer("optimizer").generate("a request of the optimizer role", max_tokens=8)
    assert fake_server.chat_count == count + 1  # answered from the cache


def test_default_sampling_sends_no_top_p_and_keeps_the_engines_themselves(monkeypatch: pytest.MonkeyPatch,
                                                                          fake_server, isolated_cache_dir,
                                                                          runtime: Runtime) -> None:
    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    engines = make_engines(parse_args(["--module", "train_centralized", "--test_engine", "vllm-model-a"]),
                           check=False)
    assert engines.test is get_engine("vllm-model-a") and engines.writer("merge") is engines.evaluation
    engines.test.generate("hello", max_tokens=4)
    assert "top_p" not in fake_server.chat_requests[-1] and fake_server.chat_requests[-1]["temperature"] == 0.0


def test_a_run_samples_each_kind_of_call_as_its_role_and_records_it(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """A homogeneous run on the bench server: every request carries its role's temperature and top_p, the
    judge scores every task (numeric included), and results.json says how the run sampled and scored."""
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        code = main(["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "4,2,2",
                     "--homo_split_num", "2", "--max_epochs", "1", "--max_steps", "1", "--batch_size", "2",
                     "--aggregate_method", "summarization", "--judge", "llm", "--top_p", "0.99", "optimizer=0.5",
                     "--temperature", "merge=0.7", "feedback=0.2", "--initial_prompt", "Count every object.",
                     "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model",
                     "--comet_mode", "disabled", "--no_cache", "--output_dir", str(tmp_path), "--run_name", "run"])
        sent: dict[str, set[tuple[float, float | None]]] = {}
        for body in server.chat_requests:
            kind = request_kind(body["messages"])
            sent.setdefault(kind, set()).add((body["temperature"], body.get("top_p")))
    assert code == 0
    assert sent == {"answer": {(0.0, 0.99)}, "feedback": {(0.2, 0.99)}, "optimizer": {(0.0, 0.5)},
                    "merge": {(0.7, 0.99)}, "judge": {(0.0, 0.99)}}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["judge"] == "llm" and results["starting_prompt"] == "Count every object."
    assert results["sampling"]["optimizer"] == {"temperature": 0.0, "top_p": 0.5}
    assert results["sampling"]["merge"] == {"temperature": 0.7, "top_p": 0.99}
    zero = (tmp_path / "run" / "prompts" / "round_000" / "global.txt").read_text()
    assert zero.strip() == "Count every object."
