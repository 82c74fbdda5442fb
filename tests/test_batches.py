"""Local batches behave like a shuffling data loader's epochs: every example once before any repeats,
continued across steps and rounds, independent of thread order and of the process (resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

import main
from bench.fake_server import FakeServer
from utils.federated.client import Engines, LocalSettings, batch_indices, round_batches, train_client
from utils.tasks.registry import Example, resolve_task

COUNTING = resolve_task("synthetic_object_counting")
BBH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbh"


def test_shard_of_5_batch_3_two_epochs():
    batches = [batch_indices(5, 3, "42:client0", step) for step in range(4)]
    # Each epoch: a batch of 3, then the short rest of 2; together exactly the shard, no repeats.
    assert [len(b) for b in batches] == [3, 2, 3, 2]
    for epoch in (batches[0:2], batches[2:4]):
        assert sorted(epoch[0] + epoch[1]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("shard", "batch"), [(17, 3), (6, 2), (7, 7), (1, 3)])
def test_every_example_once_per_epoch(shard, batch):
    steps_per_epoch = -(-shard // batch)
    for epoch in range(4):
        seen = [i for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
                for i in batch_indices(shard, batch, "7:client2", step)]
        assert sorted(seen) == list(range(shard))


def test_a_batch_larger_than_the_shard_is_the_whole_shard():
    assert [sorted(batch_indices(2, 3, "1:c", step)) for step in range(3)] == [[0, 1], [0, 1], [0, 1]]


def test_each_epoch_is_a_new_permutation_and_seeds_and_clients_differ():
    def epoch(seed_text: str, index: int) -> list[int]:
        return [i for step in range(4 * index, 4 * index + 4) for i in batch_indices(20, 5, seed_text, step)]

    assert epoch("42:client0", 0) != epoch("42:client0", 1)
    assert epoch("42:client0", 0) != epoch("43:client0", 0)
    assert epoch("42:client0", 0) != epoch("42:client1", 0)
    assert epoch("42:client0", 1) == epoch("42:client0", 1)  # a pure function: no hidden state


def test_an_empty_shard_is_a_clear_error():
    with pytest.raises(ValueError, match="no training examples"):
        batch_indices(0, 3, "42:c", 0)


def _questions_per_round(shard: list[Example], rounds: int, client_id: str = "client0") -> list[set[str]]:
    """The training questions each round's single local step answered (forward and re-score)."""
    settings = LocalSettings(max_steps=1, batch_size=3, seed=42)
    asked = []
    for round_index in range(1, rounds + 1):
        engine = ScriptedEngine()
        batches = round_batches(shard, settings, client_id, round_index)
        train_client(client_id, COUNTING, batches, COUNTING.starting_prompt(), round_index, Engines(engine, engine),
                     settings)
        asked.append({user for kind, _, user in engine.calls if kind == "answer"})
    return asked


def _shard(size: int) -> list[Example]:
    return [Example(f"I have {i} apples. How many fruits do I have?", str(i)) for i in range(size)]


def test_rounds_continue_the_loader_where_the_previous_round_stopped():
    shard = _shard(5)
    questions = {e.question for e in shard}
    per_round = _questions_per_round(shard, 4)
    assert [len(q) for q in per_round] == [3, 2, 3, 2]  # a fresh sample per round would give 3, 3, 3, 3
    assert per_round[0] | per_round[1] == questions and not per_round[0] & per_round[1]
    assert per_round[2] | per_round[3] == questions and not per_round[2] & per_round[3]


def test_batches_do_not_depend_on_which_client_trains_first():
    shard = _shard(8)
    forward = [_questions_per_round(shard, 2, cid) for cid in ("client0", "client1")]
    backward = [_questions_per_round(shard, 2, cid) for cid in ("client1", "client0")][::-1]
    assert forward == backward


def test_pipeline_covers_the_training_split_in_one_epoch_and_reports_split_sizes(tmp_path, monkeypatch, capsys):
    # snarks has 178 examples: default sizes give 50/64/64; 5 steps of 10 are exactly one epoch of 50.
    raw = [e["input"] for e in json.loads((BBH_DIR / "snarks.json").read_text())["examples"]]
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        code = main.main(["--module", "train_centralized", "--task", "BBH_snarks", "--data_dir", str(BBH_DIR),
                          "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model",
                          "--batch_size", "10", "--max_steps", "5", "--max_epochs", "1", "--seed", "3",
                          "--output_dir", str(tmp_path), "--run_name", "snarks", "--comet_mode", "disabled",
                          "--cache_dir", str(tmp_path / "cache")])
        seen = "\n".join(m["content"] for messages, _ in server.stats["prompts_seen"] for m in messages)
    assert code == 0
    assert [q for q in raw[:50] if q not in seen] == []  # every training example in the epoch
    results = json.loads((tmp_path / "snarks" / "results.json").read_text())
    assert results["split_sizes"] == {"BBH_snarks": {"train": 50, "val": 64, "test": 64}}
    assert "BBH_snarks 50/64/64 (train/val/test)" in capsys.readouterr().out
