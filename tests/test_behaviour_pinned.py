"""A seeded run on the bench server gives the prompts, accuracies and call counts pinned here.

The values were printed by `python bench/behaviour_snapshot.py`. The engine-layer split (issue 14) was
checked against the values of commit 07e78c6 on its own branch; they were re-recorded once after the
protocol changes that move them on purpose (file-order splits and loader batches, issue 11; the answer
format line served instead of trained, structured replies, issue 13), so later refactors of the engine
or the round loop are checked against this run.
"""

from __future__ import annotations

from pathlib import Path

from bench.behaviour_snapshot import snapshot

FINAL_PROMPT = "You are a careful problem solver.\nWrite each intermediate result on its own line.\nCheck the final result against the question before writing it.\nList every relevant item with its quantity before adding anything up.\nTreat number words such as 'three' as quantities.\nIgnore items that do not belong to the category being asked about.\nKeep the reasoning short and concrete.\nRead the question closely and reason step by step, checking each intermediate result before moving on."

BEFORE = {"final_prompt": FINAL_PROMPT, **{'zero_shot': {'test': {'mean': 0.5, 'synthetic_object_counting': 0.5},
               'val': {'mean': 0.25, 'synthetic_object_counting': 0.25}},
 'val': [{'mean': 0.5, 'synthetic_object_counting': 0.5}, {'mean': 0.5, 'synthetic_object_counting': 0.5}],
 'client_train_accuracy': [{'client0': 0.0, 'client1': 0.5, 'client2': 0.25},
                           {'client0': 0.5, 'client1': 0.5, 'client2': 0.5}],
 'best': {'prompt_sha': 'ca73b8f12f9feb9d', 'round': 1, 'val': 0.5},
 'final_test': {'best': {'mean': 0.625, 'synthetic_object_counting': 0.625},
                'last': {'mean': 0.375, 'synthetic_object_counting': 0.375}},
 'prompt_files': {'round_000/global.served.synthetic_object_counting.txt': '8dbb5fe4f8b45636',
                  'round_000/global.txt': '8cd08b9612b1b842',
                  'round_001/client_client0.txt': 'bbad67c6a825e951',
                  'round_001/client_client1.txt': '8cd08b9612b1b842',
                  'round_001/client_client2.txt': '39c9e359f26c1eaf',
                  'round_001/global.txt': '2c1b5356ee14225a',
                  'round_002/client_client0.txt': 'b231336f2328a60e',
                  'round_002/client_client1.txt': 'b231336f2328a60e',
                  'round_002/client_client2.txt': '2c1b5356ee14225a',
                  'round_002/global.txt': 'b231336f2328a60e'},
 'aggregate_tokens': [92, 119],
 'client_prompt_tokens': [{'client0': 62, 'client1': 34, 'client2': 64},
                          {'client0': 119, 'client1': 119, 'client2': 92}],
 'aggregate_uid_tokens': [91, 118],
 'steps': {'accepted': 8, 'total': 12},
 'format_failures': {'aggregation_empty': 0,
                     'aggregation_no_tags': 0,
                     'aggregation_truncated': 0,
                     'aggregation_unparseable_json': 0,
                     'judge': 0,
                     'optimizer_empty': 0,
                     'optimizer_no_tags': 0,
                     'optimizer_truncated': 0,
                     'optimizer_unparseable_json': 0,
                     'skipped_steps': 0},
 'llm': {'cache_hits': 0,
         'cache_misses': 0,
         'calls': 134,
         'completion_tokens': 3905,
         'failures': 0,
         'prompt_tokens': 24444,
         'retries': 0},
 'server_requests': 134,
 'server_requests_by_kind': {'answer': 96, 'feedback': 24, 'merge': 2, 'optimizer': 12},
 'server_logprob_requests': 5}}


def test_a_seeded_bench_run_finds_and_costs_what_it_did_before(tmp_path: Path) -> None:
    after = snapshot(tmp_path)
    assert {k: after[k] for k in BEFORE} == BEFORE
