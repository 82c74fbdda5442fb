"""Prompt-complexity measures (utils.reporting.complexity): values worked out by hand, and a run that records
them per round for the aggregate and every client prompt, in results.json and its plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine
from test_training_logic import COUNTING, homo_clients, make_experiment, right_answer, run

from utils.reporting.complexity import char_entropy, compression_ratio
from utils.reporting.plots import plot_run


@pytest.mark.parametrize(("text", "bits"), [
    ("aabb", 1.0),                # two characters, half each: -2 * 0.5 * log2(0.5)
    ("abcd", 2.0),                # four equally likely characters
    ("aaaa", 0.0),                # one character: no uncertainty
    ("", 0.0),
    ("aaab", 0.8112781244591328),  # -(0.75 * log2 0.75 + 0.25 * log2 0.25) = 0.311278... + 0.5
    ("éé", 0.0),                  # characters, not bytes: é is two UTF-8 bytes but one character
])
def test_character_entropy(text: str, bits: float) -> None:
    assert char_entropy(text) == pytest.approx(bits, abs=1e-12)


def test_compression_ratio_is_compressed_over_raw_utf8_bytes() -> None:
    # zlib's format: a 2-byte header, the deflate block, a 4-byte Adler-32 checksum; one byte in a fixed
    # Huffman block takes 3, so "a" becomes 9 bytes and "é" (2 bytes) 10.
    assert compression_ratio("a") == 9.0
    assert compression_ratio("é") == 5.0  # 10 / 2 bytes, not 10 / 1 character
    assert compression_ratio("") is None
    assert compression_ratio("ab" * 50) == 0.13  # 100 bytes of repetition compress to 13
    assert compression_ratio("ab" * 50) < compression_ratio("The quick brown fox jumps over the lazy dog.")


def test_a_run_records_the_measures_of_every_prompt_each_round(tmp_path: Path) -> None:
    # Every optimizer step writes "abc dab cda bcd" and keeps it (the answers stay right), so each client returns
    # it and their concatenation, duplicates removed, is it too. Its 15 characters are 5 symbols 3 times each:
    # log2(5) bits per character. No 3 bytes repeat, so zlib sends 15 fixed-Huffman literals (3 + 15 x 8 + 7 =
    # 130 bits: 17 bytes) between its 2-byte header and 4-byte checksum: 23 bytes over 15. (A shorter text, such
    # as "aabb", is rejected as junk, utils.federated.degenerate, and the clients would return the start.)
    engine = ScriptedEngine(answer=right_answer, improve=lambda current: "abc dab cda bcd")
    exp = make_experiment([COUNTING], homo_clients(2), rounds=2, method="concat")
    results = run(tmp_path, exp, engine)
    measures = {"entropy": math.log2(5), "compression_ratio": 23 / 15}
    for entry in results["rounds"]:
        assert entry["aggregate_complexity"] == pytest.approx(measures)
        clients = entry["client_prompt_complexity"]
        assert sorted(clients) == ["client0", "client1"]
        for client in clients.values():
            assert client.pop("uid") is None  # no log-probabilities here
            assert client == pytest.approx(measures)
    assert set(results["starting_prompt_complexity"]) == {"entropy", "compression_ratio"}
    assert results["starting_prompt_complexity"]["entropy"] > 3.0  # English prose: about 4 bits per character
    names = [p.name for p in plot_run(results, tmp_path / "plots")]
    assert names == ["validation_accuracy.png", "client_train_accuracy.png", "prompt_length.png",
                     "prompt_entropy.png", "prompt_compression.png"]  # no UID plot: no log-probabilities


def test_the_uid_plot_shows_the_mean_surprisal_with_its_spread() -> None:
    from utils.reporting.plots import complexity_series

    rounds = [{"round": 1, "aggregate_complexity": {"entropy": 4.0, "compression_ratio": 0.6},
               "client_prompt_complexity": {"c": {"entropy": 3.0, "compression_ratio": 0.5, "uid": None}},
               "aggregate_uid": {"mean": 2.0, "variance": 0.25, "max": 5.0, "tokens": 9}}]
    series = complexity_series({"rounds": rounds, "starting_prompt_complexity": {"entropy": 4.5,
                                                                                 "compression_ratio": 0.7}})
    (uid,) = series["prompt_uid.png"]
    assert (uid.xs, uid.ys, uid.yerr) == ([1], [2.0], [0.5])  # std = sqrt(0.25)
    glob, clients = series["prompt_entropy.png"]
    assert (glob.xs, glob.ys, clients.ys) == ([0, 1], [4.5, 4.0], [4.5, 3.0])
