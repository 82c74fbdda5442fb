"""A seeded run on the bench server gives the prompts, accuracies and call counts it gave before the engine
layer was split (issue 14): the values below were printed by `python bench/behaviour_snapshot.py` on the
code of commit 07e78c6, before any change of that split."""

from __future__ import annotations

from pathlib import Path

from bench.behaviour_snapshot import snapshot

FINAL_PROMPT = (
    "You are a careful problem solver.\n"
    "Read the question closely and reason step by step, checking each intermediate result before moving on.\n"
    "Write each intermediate result on its own line.\n"
    "Keep the reasoning short and concrete.\n"
    "List every relevant item with its quantity before adding anything up.\n"
    "Check the final result against the question before writing it.\n"
    "Apply multiplication before addition and subtraction inside each bracket.\n"
    "Finish with a final line of the form 'Answer: <number>' containing only the number.")

BEFORE = {
    "zero_shot": {"test": {"mean": 0.375, "synthetic_object_counting": 0.375},
                  "val": {"mean": 0.125, "synthetic_object_counting": 0.125}},
    "val": [{"mean": 0.625, "synthetic_object_counting": 0.625},
            {"mean": 0.375, "synthetic_object_counting": 0.375}],
    "client_train_accuracy": [{"client0": 0.0, "client1": 0.0, "client2": 0.5},
                              {"client0": 0.5, "client1": 0.5, "client2": 0.75}],
    "best": {"prompt_sha": "d7f3ea3881281452", "round": 1, "val": 0.625},
    "final_test": {"best": {"mean": 0.25, "synthetic_object_counting": 0.25},
                   "last": {"mean": 0.5, "synthetic_object_counting": 0.5}},
    "final_prompt": FINAL_PROMPT,
    # SHA-256 (first 16 hex digits) of every prompt file the run wrote.
    "prompt_files": {
        "round_000/global.txt": "61ad94b70b6e3561",
        "round_001/client_client0.txt": "ed34ed743d79a458",
        "round_001/client_client1.txt": "d9c09e6464ecff2e",
        "round_001/client_client2.txt": "141fe6ecb8a9372a",
        "round_001/global.txt": "a602c236559705fe",
        "round_002/client_client0.txt": "a602c236559705fe",
        "round_002/client_client1.txt": "2123a152c6591aee",
        "round_002/client_client2.txt": "a602c236559705fe",
        "round_002/global.txt": "2123a152c6591aee",
    },
    # The bench server's /tokenize counts ceil(chars / 4), the estimate prompt lengths used before: the
    # numbers stay, only their source (the server's tokenizer now) changed.
    "aggregate_tokens": [110, 129],
    "client_prompt_tokens": [{"client0": 77, "client1": 89, "client2": 67},
                             {"client0": 110, "client1": 129, "client2": 110}],
    "aggregate_uid_tokens": [109, 128],
    "steps": {"accepted": 6, "total": 12},
    "format_failures": {"aggregation": 0, "dropped_format_instruction": 0, "judge": 0, "optimizer_no_tags": 0},
    "llm": {"cache_hits": 0, "cache_misses": 0, "calls": 134, "completion_tokens": 4256, "failures": 0,
            "prompt_tokens": 24622, "retries": 0},
    "server_requests": 134,
    "server_requests_by_kind": {"answer": 96, "feedback": 24, "merge": 2, "optimizer": 12},
    "server_logprob_requests": 5,
}


def test_a_seeded_bench_run_finds_and_costs_what_it_did_before_the_split(tmp_path: Path) -> None:
    after = snapshot(tmp_path)
    assert {k: after[k] for k in BEFORE} == BEFORE
