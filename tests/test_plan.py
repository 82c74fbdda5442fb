"""The plan of a run (utils.federated.plan): the calls it counts, by hand from the spec, and the three views
of it that must agree: --estimate, the progress bars' total, and what a run on the bench server makes.

The spec's local step on a batch of B examples: B answers (forward), B feedbacks (backward), one
optimizer call, B answers with the new prompt (re-score), so 3B + 1 calls; with --judge llm each
answer, of every task, is also judged. An evaluation answers each example of its split once. A round
merges two or more prompts with one call when they fit one request, else in a tree of requests
(summarization, sum_uid; concat calls nothing). The last round tests
its aggregate beside the validation, and that test is the final test of the last prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fake_server import FakeServer
from main import main
from textgrad.serving.stats import CallPace, paced
from utils.config import parse_args
from utils.estimate.requests import PlanSpec, plan_calls
from utils.federated.client import LocalSettings
from utils.federated.experiment import Client, Experiment
from utils.federated.plan import plan_run
from utils.federated.runner import experiment_from_args
from utils.federated.screening import ScreenSettings
from utils.tasks.registry import Example, resolve_task

COUNTING = resolve_task("synthetic_object_counting")
ARITH = resolve_task("synthetic_multistep_arithmetic")
FREE_FORM = resolve_task("BBH_my_free_text_task", kind_hint_targets=["a sunny day", "two cats"])


def examples(prefix: str, n: int) -> list[Example]:
    return [Example(f"{prefix} question {i}?", str(i)) for i in range(n)]


def experiment(shards: list[int], *, val: int, test: int, steps: int, batch: int, rounds: int,
               method: str | None = "summarization", per_round: int | None = None, larger: bool = False,
               tasks: list = (COUNTING,), screen: int | None = None) -> Experiment:
    clients = [Client(f"client{i}", tasks[i % len(tasks)], examples(f"c{i}", n)) for i, n in enumerate(shards)]
    return Experiment(module="test", tasks=list(tasks), clients=clients,
                      val_sets={t.name: (t, examples(f"{t.name} val", val)) for t in tasks},
                      test_sets={t.name: (t, examples(f"{t.name} test", test)) for t in tasks},
                      aggregate_method=method, rounds=rounds, clients_per_round=per_round or len(clients),
                      settings=LocalSettings(max_steps=steps, batch_size=batch, seed=3), run_larger_model=larger,
                      screening=ScreenSettings("screen", screen) if screen else ScreenSettings())


def test_a_homogeneous_run_counts_clients_times_steps_times_the_calls_of_a_batch() -> None:
    plan = plan_run(experiment([4, 4, 4], val=4, test=4, steps=2, batch=2, rounds=2))
    assert plan.zero_shot_calls == 4 + 4  # validation and test of the starting prompt
    first, last = plan.rounds
    assert first.step_calls == 3 * 2 * (2 + 2 + 1 + 2)  # C x S x (B answers + B feedback + 1 + B re-score)
    assert (first.merge, first.validation.calls, first.last_test) == (1, 4, None)
    assert last.last_test is not None and last.last_test.calls == 4
    assert first.calls() == 42 + 1 + 4 and last.calls() == 42 + 1 + 4 + 4
    assert plan.calls() == 8 + 47 + 51  # the final test repeats the last round's: nothing more


def test_a_short_last_batch_and_the_evaluation_engines_own_test() -> None:
    # One client of 8 examples, batch 3: an epoch is batches of 3, 3 and 2, so round 2 trains on 2 then 3.
    plan = plan_run(experiment([8], val=6, test=6, steps=2, batch=3, rounds=2, method=None, larger=True))
    assert [[len(s.batch) for s in c.steps] for r in plan.rounds for c in r.clients] == [[3, 3], [2, 3]]
    assert [r.step_calls for r in plan.rounds] == [10 + 10, 7 + 10]
    assert [r.merge for r in plan.rounds] == [0, 0]  # centralized: the client's prompt is the aggregate
    assert plan.zero_shot_calls == 6 + 6 + 6  # the evaluation engine answers the test set too
    assert plan.calls() == 18 + (20 + 6) + (17 + 6 + 6)


def test_partial_participation_counts_the_chosen_clients_only() -> None:
    plan = plan_run(experiment([3, 3, 3, 3, 3], val=2, test=2, steps=1, batch=3, rounds=3, per_round=2))
    assert [len(r.clients) for r in plan.rounds] == [2, 2, 2]
    assert len({tuple(r.client_ids) for r in plan.rounds}) > 1  # a new seeded draw each round
    assert [r.step_calls for r in plan.rounds] == [2 * 10] * 3
    assert plan.calls() == 4 + 3 * (20 + 1 + 2) + 2
    alone = plan_run(experiment([3, 3], val=2, test=2, steps=1, batch=3, rounds=1, per_round=1))
    assert alone.rounds[0].merge == 0  # one prompt per round: nothing to merge


def test_concat_merges_without_a_call_and_screening_answers_for_every_client() -> None:
    plan = plan_run(experiment([2, 2, 2], val=5, test=2, steps=1, batch=2, rounds=1, method="concat", screen=3))
    (only,) = plan.rounds
    assert only.merge == 0
    assert only.screening == 3 * 3  # 3 screening questions for each of the 3 returned prompts
    assert sum(len(examples) for _, examples in only.screening_sets.values()) == 3
    assert plan.calls() == 7 + 3 * 7 + 9 + 5 + 2


def test_an_llm_judge_adds_a_call_per_answer_of_every_task() -> None:
    plan = plan_run(experiment([2, 2], val=3, test=3, steps=1, batch=2, rounds=1, tasks=[FREE_FORM, COUNTING]),
                    judge=True)
    free, counting = plan.rounds[0].clients
    assert free.steps[0].calls == 3 * 2 + 1 + 2 * 2      # its 4 answers judged
    assert counting.steps[0].calls == 3 * 2 + 1 + 2 * 2  # numeric answers too, under --judge llm
    assert plan.zero_shot_calls == 2 * (3 * 2 * 2)       # val and test: both tasks' answers, each judged
    unjudged = plan_run(experiment([2, 2], val=3, test=3, steps=1, batch=2, rounds=1, tasks=[FREE_FORM, COUNTING]))
    assert unjudged.rounds[0].clients[1].steps[0].calls == 3 * 2 + 1


def test_a_resumed_run_plans_the_rounds_after_its_checkpoint() -> None:
    plan = plan_run(experiment([4], val=3, test=3, steps=1, batch=2, rounds=3, method=None))
    assert [r.index for r in plan.after(1).rounds] == [2, 3] and plan.after(1).zero_shot == ()
    assert plan.after(1).calls() == 2 * (7 + 3) + 3
    assert plan.after(3).calls() == 3  # only the final test is left: the last prompt is tested again


def test_a_flower_server_plans_full_batches_of_data_it_does_not_hold() -> None:
    exp = experiment([0, 0], val=2, test=2, steps=2, batch=3, rounds=1)
    plan = plan_run(exp)
    assert plan.rounds[0].step_calls == 2 * 2 * 10
    with pytest.raises(ValueError, match="does not hold the data of client client0"):
        plan.rounds[0].clients[0].batches  # noqa: B018 - the property raises


@pytest.mark.parametrize("shape", [
    {"shards": [4, 4, 4], "steps": 2, "batch": 2, "rounds": 2},
    {"shards": [8], "steps": 2, "batch": 3, "rounds": 2, "method": None, "larger": True},
    {"shards": [3, 3, 3, 3, 3], "steps": 1, "batch": 3, "rounds": 3, "per_round": 2},
    {"shards": [2, 2, 2], "steps": 1, "batch": 2, "rounds": 2, "method": "concat", "screen": 3},
    {"shards": [2, 2], "steps": 2, "batch": 2, "rounds": 2, "tasks": [FREE_FORM, COUNTING], "judge": True},
])
def test_the_estimator_counts_every_call_of_the_plan_sent_or_cached(shape: dict) -> None:
    judge = shape.pop("judge", False)
    exp = experiment(shape.pop("shards"), val=5, test=4, **shape)
    plan = plan_run(exp, judge=judge)
    for use_cache in (True, False):
        estimate = plan_calls(PlanSpec(experiment=exp, plan=plan, test_engine="T", evaluation_engine="E",
                                       use_cache=use_cache, logprobs=False, count_tokens=lambda text: 1,
                                       completion=dict.fromkeys(("answer", "feedback", "optimizer", "merge",
                                                                 "judge"), 1)))
        totals = estimate.totals().values()
        assert sum(t.calls + t.cached for t in totals) == plan.calls()


# ---------------------------------------------------------------- the three views agree on the bench server

# 3 clients x 2 steps x batch 2 on shards of 4, 2 rounds, validation and test sets of 4. With seed 2 the bench
# server's replies meet the plan's assumptions: every step gives a prompt, the clients return three
# different prompts each round, and the last round's aggregate validates best.
BENCH_RUN = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "12,4,4",
             "--homo_split_num", "3", "--max_epochs", "2", "--max_steps", "2", "--batch_size", "2", "--seed", "2",
             "--aggregate_method", "summarization", "--test_engine", "vllm-fake-model",
             "--evaluation_engine", "vllm-fake-model", "--comet_mode", "disabled", "--run_name", "planned"]
BENCH_CALLS = (4 + 4) + 2 * (3 * 2 * (2 + 2 + 1 + 2) + 1 + 4) + 4


def test_estimate_progress_and_the_run_agree_with_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert BENCH_CALLS == 106
    argv = [*BENCH_RUN, "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        assert main([*argv, "--estimate", "--estimate_json", str(tmp_path / "estimate.json")]) == 0
        assert server.stats["requests"] == 0
        with paced(CallPace()) as pace:  # times every request of the run, by kind, as the run's ETA does
            assert main(argv) == 0
        requests = server.stats["requests"]
    capsys.readouterr()
    estimate = json.loads((tmp_path / "estimate.json").read_text())
    run_dir = tmp_path / "out" / "planned"
    results = json.loads((run_dir / "results.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    progress_total = next(e for e in events if e["type"] == "estimate")["llm_calls"]
    assert estimate["total"]["calls"] + estimate["total"]["cached"] == BENCH_CALLS
    assert progress_total == BENCH_CALLS
    assert results["llm"]["calls"] + results["llm"]["cache_hits"] == BENCH_CALLS == requests
    assert results["best"]["round"] == 2 and results["steps"]["total"] == 12  # the plan's assumptions held
    # The ETA prices the plan's calls by kind at the pace of the requests it timed: the same kinds, call for call
    # (answers: zero-shot 4 + 4, 2 rounds x 3 clients x 2 steps x 2 x 2, validation 4 + 4, the last test 4;
    # log-probabilities: each round's 3 client prompts and its aggregate, a text measured once however often
    # it comes back, so the run measures its distinct prompts).
    kinds = {"answer": 8 + 48 + 8 + 4, "feedback": 24, "optimizer": 12, "merge": 2, "judge": 0, "logprob": 8}
    assert plan_run_of(argv).kinds().by_kind() == kinds
    measured = {path.read_text() for path in (run_dir / "prompts").glob("round_00[12]/*.txt")}
    assert pace.snapshot().calls == {**{kind: n for kind, n in kinds.items() if n}, "logprob": len(measured)}


def plan_run_of(argv: list[str]):
    """The plan main.py walks for these flags."""
    return plan_run(experiment_from_args(parse_args(argv)))
