"""A seeded run on the bench server gives the prompts, accuracies and call counts pinned here.

The values were printed by `python bench/behaviour_snapshot.py`. The engine-layer split (issue 14) was
checked against the values of commit 07e78c6 on its own branch; they were re-recorded once after the
protocol changes that move them on purpose (file-order splits and loader batches, issue 11; the answer
format line served instead of trained, structured replies, issue 13), so later refactors of the engine
or the round loop are checked against this run. The heterogeneous and centralized runs were recorded at
commit caaceeb, before textgrad/ and utils/ were laid out anew. Issue 27 moved only the homogeneous and
heterogeneous runs' prompt tokens, by 33 each: their two merge requests now state the merged prompt's budget.
The degenerate counts (junk replies, zero in these runs) were added to format_failures later, with nothing
else moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
 'format_failures': {'aggregation_degenerate': 0,
                     'aggregation_empty': 0,
                     'aggregation_no_tags': 0,
                     'aggregation_truncated': 0,
                     'aggregation_unparseable_json': 0,
                     'judge': 0,
                     'optimizer_degenerate': 0,
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
         'prompt_tokens': 24477,
         'retries': 0},
 'server_requests': 134,
 'server_requests_by_kind': {'answer': 96, 'feedback': 24, 'merge': 2, 'optimizer': 12},
 'server_logprob_requests': 5}}


HETERO = {'aggregate_tokens': [69, 136],
 'aggregate_uid_tokens': [68, 135],
 'best': {'prompt_sha': '2081c14a44535440', 'round': 2, 'val': 0.49999999999999994},
 'client_prompt_tokens': [{'synthetic_multistep_arithmetic': 34,
                           'synthetic_object_counting': 57,
                           'synthetic_word_sorting': 46},
                          {'synthetic_multistep_arithmetic': 105,
                           'synthetic_object_counting': 100,
                           'synthetic_word_sorting': 87}],
 'client_train_accuracy': [{'synthetic_multistep_arithmetic': 0.5,
                            'synthetic_object_counting': 0.25,
                            'synthetic_word_sorting': 0.75},
                           {'synthetic_multistep_arithmetic': 0.5,
                            'synthetic_object_counting': 0.25,
                            'synthetic_word_sorting': 0.75}],
 'final_prompt': 'You are a careful problem solver.\n'
                 "Treat number words such as 'three' as quantities.\n"
                 'Keep the reasoning short and concrete.\n'
                 'Write each intermediate result on its own line.\n'
                 'Compare words letter by letter when putting them in order.\n'
                 'Ignore items that do not belong to the category being asked about.\n'
                 'Apply multiplication before addition and subtraction inside each bracket.\n'
                 'List every relevant item with its quantity before adding anything up.\n'
                 'Read the question closely and reason step by step, checking each intermediate result '
                 'before moving on.',
 'final_test': {'best': {'mean': 0.3333333333333333,
                         'synthetic_multistep_arithmetic': 0.3333333333333333,
                         'synthetic_object_counting': 0.5,
                         'synthetic_word_sorting': 0.16666666666666666},
                'last': {'mean': 0.3333333333333333,
                         'synthetic_multistep_arithmetic': 0.3333333333333333,
                         'synthetic_object_counting': 0.5,
                         'synthetic_word_sorting': 0.16666666666666666}},
 'format_failures': {'aggregation_degenerate': 0,
                     'aggregation_empty': 0,
                     'aggregation_no_tags': 0,
                     'aggregation_truncated': 0,
                     'aggregation_unparseable_json': 0,
                     'judge': 0,
                     'optimizer_degenerate': 0,
                     'optimizer_empty': 0,
                     'optimizer_no_tags': 0,
                     'optimizer_truncated': 0,
                     'optimizer_unparseable_json': 0,
                     'skipped_steps': 0},
 'llm': {'cache_hits': 0,
         'cache_misses': 0,
         'calls': 176,
         'completion_tokens': 5104,
         'failures': 0,
         'prompt_tokens': 28482,
         'retries': 0},
 'prompt_files': {'round_000/global.served.synthetic_multistep_arithmetic.txt': '8dbb5fe4f8b45636',
                  'round_000/global.served.synthetic_object_counting.txt': '8dbb5fe4f8b45636',
                  'round_000/global.served.synthetic_word_sorting.txt': 'fe94621510c50400',
                  'round_000/global.txt': '8cd08b9612b1b842',
                  'round_001/client_synthetic_multistep_arithmetic.txt': '8cd08b9612b1b842',
                  'round_001/client_synthetic_object_counting.txt': 'b915b73ee650084b',
                  'round_001/client_synthetic_word_sorting.txt': '742c3b993515c9f1',
                  'round_001/global.txt': 'c48dc7b80672ab11',
                  'round_002/client_synthetic_multistep_arithmetic.txt': '6e5d6870dcb4351d',
                  'round_002/client_synthetic_object_counting.txt': 'cb312ed1b181b9f7',
                  'round_002/client_synthetic_word_sorting.txt': 'd98a7295c50fa0a4',
                  'round_002/global.txt': 'db42758fb840dc82'},
 'server_logprob_requests': 8,
 'server_requests': 176,
 'server_requests_by_kind': {'answer': 138, 'feedback': 24, 'merge': 2, 'optimizer': 12},
 'steps': {'accepted': 8, 'total': 12},
 'val': [{'mean': 0.3333333333333333,
          'synthetic_multistep_arithmetic': 0.3333333333333333,
          'synthetic_object_counting': 0.3333333333333333,
          'synthetic_word_sorting': 0.3333333333333333},
         {'mean': 0.49999999999999994,
          'synthetic_multistep_arithmetic': 0.3333333333333333,
          'synthetic_object_counting': 0.6666666666666666,
          'synthetic_word_sorting': 0.5}],
 'zero_shot': {'test': {'mean': 0.4444444444444444,
                        'synthetic_multistep_arithmetic': 0.6666666666666666,
                        'synthetic_object_counting': 0.16666666666666666,
                        'synthetic_word_sorting': 0.5},
               'val': {'mean': 0.2222222222222222,
                       'synthetic_multistep_arithmetic': 0.16666666666666666,
                       'synthetic_object_counting': 0.16666666666666666,
                       'synthetic_word_sorting': 0.3333333333333333}}}

CENTRALIZED = {'aggregate_tokens': [63, 90],
 'aggregate_uid_tokens': [62, 89],
 'best': {'prompt_sha': 'c599e25a463ce072', 'round': 0, 'val': 0.3333333333333333},
 'client_prompt_tokens': [{'central': 63}, {'central': 90}],
 'client_train_accuracy': [{'central': 0.25}, {'central': 0.5}],
 'final_prompt': 'You are a careful problem solver.\n'
                 'Keep the reasoning short and concrete.\n'
                 'Apply multiplication before addition and subtraction inside each bracket.\n'
                 'Write each intermediate result on its own line.\n'
                 'Check the final result against the question before writing it.\n'
                 'Read the question closely and reason step by step, checking each intermediate result '
                 'before moving on.',
 'final_test': {'best': {'mean': 0.5, 'synthetic_multistep_arithmetic': 0.5},
                'last': {'mean': 0.3333333333333333, 'synthetic_multistep_arithmetic': 0.3333333333333333}},
 'format_failures': {'aggregation_degenerate': 0,
                     'aggregation_empty': 0,
                     'aggregation_no_tags': 0,
                     'aggregation_truncated': 0,
                     'aggregation_unparseable_json': 0,
                     'judge': 0,
                     'optimizer_degenerate': 0,
                     'optimizer_empty': 0,
                     'optimizer_no_tags': 0,
                     'optimizer_truncated': 0,
                     'optimizer_unparseable_json': 0,
                     'skipped_steps': 0},
 'llm': {'cache_hits': 0,
         'cache_misses': 0,
         'calls': 58,
         'completion_tokens': 1434,
         'failures': 0,
         'prompt_tokens': 7737,
         'retries': 0},
 'prompt_files': {'round_000/global.served.synthetic_multistep_arithmetic.txt': '8dbb5fe4f8b45636',
                  'round_000/global.txt': '8cd08b9612b1b842',
                  'round_001/client_central.txt': '27b2a85177d3cade',
                  'round_001/global.txt': '27b2a85177d3cade',
                  'round_002/client_central.txt': '54052f229b14f980',
                  'round_002/global.txt': '54052f229b14f980'},
 'server_logprob_requests': 2,
 'server_requests': 58,
 'server_requests_by_kind': {'answer': 46, 'feedback': 8, 'optimizer': 4},
 'steps': {'accepted': 4, 'total': 4},
 'val': [{'mean': 0.3333333333333333, 'synthetic_multistep_arithmetic': 0.3333333333333333},
         {'mean': 0.0, 'synthetic_multistep_arithmetic': 0.0}],
 'zero_shot': {'test': {'mean': 0.5, 'synthetic_multistep_arithmetic': 0.5},
               'val': {'mean': 0.3333333333333333, 'synthetic_multistep_arithmetic': 0.3333333333333333}}}


@pytest.mark.parametrize(("run", "before"), [("homo", BEFORE), ("hetero", HETERO), ("centralized", CENTRALIZED)])
def test_a_seeded_bench_run_finds_and_costs_what_it_did_before(tmp_path: Path, run: str,
                                                               before: dict[str, Any]) -> None:
    after = snapshot(tmp_path, run)
    assert {k: after[k] for k in before} == before
