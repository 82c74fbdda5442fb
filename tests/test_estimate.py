"""The estimate of a run's bill (utils.estimate.requests, utils.estimate.cost, main.py --estimate, the launchers).

Counting by hand on tiny experiments pins each rule of the call structure (the memo, the cache, the
merge, the re-score). Against the bench server the count, given the decisions a finished run recorded,
must equal the requests the server counted, for centralized, homogeneous (partial participation) and
heterogeneous runs; and --estimate itself must make no request at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from run_helpers import REPO, ServerProcess, main_env, run_args, run_main
from scripted_engine import ScriptedEngine

from utils.config import parse_args
from utils.estimate.outcomes import Outcomes
from utils.estimate.prices import listed_price, parse_price_overrides
from utils.estimate.requests import CHAT_OVERHEAD, PlanSpec, plan_calls
from utils.federated.client import Engines, LocalSettings, train_in_process
from utils.federated.experiment import Client, Experiment
from utils.federated.plan import plan_run
from utils.federated.runner import experiment_from_args
from utils.reporting.report import build_report
from utils.tasks.registry import Example, resolve_task, served_prompt

COUNTING = resolve_task("synthetic_object_counting")
ARITH = resolve_task("synthetic_multistep_arithmetic")
# A BBH-format file whose targets are free text (not one of the 27): judged by an LLM under --judge llm.
FREE_FORM = resolve_task("BBH_my_free_text_task", kind_hint_targets=["a sunny day", "two cats"])
LIMITS = {"answer": 10, "feedback": 20, "optimizer": 30, "merge": 40, "judge": 8}


def examples(prefix: str, n: int) -> list[Example]:
    return [Example(f"{prefix} question {i}?", str(i)) for i in range(n)]


def experiment(clients: list[Client], *, val: int, test: int, steps: int, batch: int, rounds: int,
               method: str | None = None, per_round: int | None = None, larger: bool = False) -> Experiment:
    tasks = list({c.task.name: c.task for c in clients}.values())
    return Experiment(module="test", tasks=tasks, clients=clients,
                      val_sets={t.name: (t, examples(f"{t.name} val", val)) for t in tasks},
                      test_sets={t.name: (t, examples(f"{t.name} test", test)) for t in tasks},
                      aggregate_method=method, rounds=rounds, clients_per_round=per_round or len(clients),
                      settings=LocalSettings(max_steps=steps, batch_size=batch, seed=3, answer_max_tokens=10,
                                             feedback_max_tokens=20, optimizer_max_tokens=30),
                      merge_max_tokens=40, run_larger_model=larger)


def spec(exp: Experiment, *, evaluation: str = "T", judge: bool = False, use_cache: bool = True,
         count_tokens: Any = lambda text: 1) -> PlanSpec:
    return PlanSpec(experiment=exp, plan=plan_run(exp, judge=judge), test_engine="T", evaluation_engine=evaluation,
                    use_cache=use_cache,
                    logprobs=True, count_tokens=count_tokens, completion=LIMITS)


def central(train: int, task=COUNTING) -> list[Client]:
    return [Client("central", task, examples("train", train))]


# ---------------------------------------------------------------- the formula, counted by hand


def test_centralized_counts_each_rule_of_a_local_step() -> None:
    # Shard of 2 = batch of 2: both steps see the same two questions.
    plan = plan_calls(spec(experiment(central(2), val=3, test=4, steps=2, batch=2, rounds=1)))
    # zero-shot 3 + 4; step 1: 2 answers, 2 feedback, 1 optimizer, 2 re-scores; step 2: its 2 answers are
    # the re-scores of step 1 (cached), 2 feedback, 1 optimizer, 2 re-scores; validation 3; final test 4
    # (the best prompt is the last: memo).
    assert plan.calls() == 7 + 7 + 5 + 3 + 4
    assert plan.totals()["T"].cached == 2
    assert plan.calls(("logprob",)) == 1  # the client's prompt is the aggregate: measured once
    by_phase = {phase: engines["T"].calls for phase, engines in plan.by_phase().items()}
    assert by_phase == {"zero-shot": 7, "round 1 local steps": 12, "round 1 validation": 3, "final test": 4}
    # without the cache the repeated answers are sent again; the evaluator's memo still spares the last test
    assert plan_calls(spec(experiment(central(2), val=3, test=4, steps=2, batch=2, rounds=1),
                           use_cache=False)).calls() == 26 + 2
    assert plan.conditional == []  # one round: no earlier best prompt


def test_a_second_engine_gets_the_feedback_the_optimizer_and_its_own_zero_shot_test() -> None:
    plan = plan_calls(spec(experiment(central(2), val=3, test=4, steps=2, batch=2, rounds=1, larger=True),
                           evaluation="E"))
    totals = plan.totals()
    assert totals["T"].calls == 7 + 2 + 2 + 2 + 3 + 4  # answers only
    assert totals["E"].calls == 4 + 2 + 1 + 2 + 1  # its zero-shot test, feedback and optimizer of both steps


def test_a_reverted_step_repeats_requests_the_cache_answers_and_the_memo_spares_evaluations() -> None:
    exp = experiment(central(1), val=2, test=2, steps=2, batch=1, rounds=1)
    plan = plan_calls(spec(exp), Outcomes(reverted_steps=frozenset({("central", 1, 0), ("central", 1, 1)})))
    # step 2 sends step 1's requests again (same prompt, same question): all four from the cache; the
    # client returns the starting prompt, already validated and tested at zero-shot.
    assert plan.calls() == 4 + 4
    assert plan.totals()["T"].cached == 4
    # Keeping step 2's prompt: the same optimizer request gave the same prompt, re-scored for free; it is
    # new to validation and test.
    kept = plan_calls(spec(exp), Outcomes(reverted_steps=frozenset({("central", 1, 0)})))
    assert kept.calls() == 4 + 4 + 2 + 2 and kept.totals()["T"].cached == 4
    unusable = plan_calls(spec(exp), Outcomes(unusable_steps=frozenset({("central", 1, 0), ("central", 1, 1)})))
    assert unusable.calls() == 4 + 3  # no re-score, then step 2 repeats step 1 from the cache


def test_homogeneous_rounds_merge_the_chosen_clients_prompts() -> None:
    clients = [Client(f"client{i}", COUNTING, examples(f"c{i}", 2)) for i in range(4)]
    exp = experiment(clients, val=2, test=2, steps=1, batch=2, rounds=2, method="summarization", per_round=2)
    plan = plan_calls(spec(exp))
    # zero-shot 4; each round: 2 chosen clients x (2 + 2 + 1 + 2), 1 merge, validation 2; final test 2
    assert plan.calls() == 4 + 2 * (14 + 1 + 2) + 2
    assert plan.calls(("logprob",)) == 2 * 3  # two client prompts and the aggregate per round
    assert plan.conditional[0][1] == 2  # an earlier round's best prompt would need its own test
    concat = experiment(clients, val=2, test=2, steps=1, batch=2, rounds=2, method="concat", per_round=2)
    assert plan_calls(spec(concat)).calls() == 4 + 2 * (14 + 2) + 2  # concatenation calls no LLM
    # clients that all keep the global prompt leave nothing to merge or validate again
    reverted = frozenset((f"client{i}", r, 0) for i in range(4) for r in (1, 2))
    assert plan_calls(spec(exp), Outcomes(reverted_steps=reverted)).by_phase().get("round 1 merge") is None


def test_tgd_momentum_prices_the_history_and_starts_it_afresh_each_round() -> None:
    def optimizer_tally(steps: int, rounds: int, optimizer: str) -> tuple[int, float]:
        exp = experiment(central(2), val=1, test=1, steps=steps, batch=2, rounds=rounds)
        settings = dataclasses.replace(exp.settings, optimizer=optimizer, momentum_window=1)
        tally = plan_calls(spec(dataclasses.replace(exp, settings=settings))).totals(("optimizer",))["T"]
        return tally.calls, tally.prompt_tokens

    plain_calls, plain_tokens = optimizer_tally(2, 1, "tgd")
    momentum_calls, momentum_tokens = optimizer_tally(2, 1, "tgd_momentum")
    # every text counts 1 token here: step 2 also carries step 1's label (1), its prompt (1) and its two
    # feedback replies (2 x (20 + 1))
    assert (momentum_calls, momentum_tokens - plain_tokens) == (plain_calls, 1 + 1 + 2 * 21)
    assert optimizer_tally(1, 2, "tgd_momentum") == optimizer_tally(1, 2, "tgd")  # one step a round: no past


def test_a_resumed_run_counts_the_rounds_after_its_checkpoint() -> None:
    exp = experiment(central(2), val=3, test=4, steps=1, batch=2, rounds=3)
    resumed = plan_calls(dataclasses.replace(spec(exp), plan=plan_run(exp).after(2), first_prompt="the round 2 prompt"))
    # no zero-shot; round 3 alone: 2 + 2 + 1 + 2, validation 3, final test 4
    assert list(resumed.by_phase()) == ["round 3 local steps", "round 3 validation", "final test"]
    assert resumed.calls() == 7 + 3 + 4


def test_heterogeneous_validation_and_tests_cover_every_task() -> None:
    clients = [Client(COUNTING.name, COUNTING, examples("a", 1)), Client(ARITH.name, ARITH, examples("b", 1))]
    plan = plan_calls(spec(experiment(clients, val=2, test=2, steps=1, batch=1, rounds=1, method="sum_uid")))
    # zero-shot (2 + 2) per task; 2 clients x (1 + 1 + 1 + 1); 1 merge; validation 2 x 2; final test 2 x 2
    assert plan.calls() == 8 + 8 + 1 + 4 + 4


def test_an_llm_judge_checks_every_answer() -> None:
    plan = plan_calls(spec(experiment(central(2, FREE_FORM), val=3, test=4, steps=2, batch=2, rounds=1), judge=True))
    assert plan.calls() == 26 + 20  # one judge call per answer sent (20), none for the two cached answers
    counting = plan_calls(spec(experiment(central(2), val=3, test=4, steps=2, batch=2, rounds=1), judge=True))
    assert counting.calls() == 26 + 20  # numeric answers too, under --judge llm
    assert plan_calls(spec(experiment(central(2), val=3, test=4, steps=2, batch=2, rounds=1))).calls() == 26


def test_tokens_of_the_zero_shot_answers() -> None:
    words = lambda text: len(text.split())  # noqa: E731 - a tokenizer of one token per word
    exp = experiment(central(2), val=3, test=4, steps=1, batch=2, rounds=1)
    plan = plan_calls(spec(exp, count_tokens=words))
    zero_shot = plan.by_phase()["zero-shot"]["T"]
    # Served as the trained text plus the task's format line: 22 + 14 words.
    prompt_words = len(COUNTING.starting_prompt().split()) + len(COUNTING.format_instruction.split())
    assert prompt_words == 36
    assert CHAT_OVERHEAD == 8 + 6 * 2  # textgrad.serving.window: per request, per message
    assert zero_shot.prompt_tokens == 7 * (prompt_words + 4 + 20)  # questions like "val question 0?"
    assert zero_shot.completion_tokens == 7 * 10  # the answer limit


def test_answers_already_in_the_cache_are_free() -> None:
    exp = experiment(central(2), val=3, test=4, steps=1, batch=2, rounds=1)
    start = served_prompt(COUNTING.starting_prompt(), COUNTING)  # what the cache holds: the served request
    plan = plan_calls(dataclasses.replace(spec(exp), known_reply=lambda engine, messages, max_tokens:
                                          messages[0]["content"] == start and " val " in messages[1]["content"]))
    assert plan.by_phase()["zero-shot"]["T"].calls == 4 and plan.by_phase()["zero-shot"]["T"].cached == 3


def test_the_in_process_clients_train_on_the_batches_of_the_plan() -> None:
    client = Client("c7", COUNTING, examples("train", 8))
    exp = experiment([client], val=1, test=1, steps=3, batch=4, rounds=2)
    exp.settings = LocalSettings(max_steps=3, batch_size=4, seed=11)
    planned = plan_run(exp).rounds[1].clients[0]  # round 2: the second epoch of an 8-example shard
    engine = ScriptedEngine()
    train_in_process(Engines(engine, engine), exp.settings, exp.outbound)(plan_run(exp).rounds[1],
                                                                          COUNTING.starting_prompt())
    # Each step: 4 forward answers, 4 feedback calls, the optimizer, 4 re-score answers. Split at the
    # optimizer calls, a segment ends with the forward answers and the feedback of a step.
    segments: list[list[tuple[str, str]]] = [[]]
    for kind, _, user in engine.calls:
        if kind == "optimizer":
            segments.append([])
        else:
            segments[-1].append((kind, user))
    forward = []
    for segment in segments[:-1]:
        before_feedback = segment[:[kind for kind, _ in segment].index("feedback")]
        forward.append(sorted(user for kind, user in before_feedback if kind == "answer")[-4:]
                       if len(before_feedback) == 4 else sorted(user for _, user in before_feedback[-4:]))
    assert forward == [sorted(ex.question for ex in batch) for batch in planned.batches]
    assert len(planned.batches) == 3 and all(len(batch) == 4 for batch in planned.batches)
    assert planned.batches[0] != planned.batches[2]  # a fresh permutation each epoch: steps 3 and 4 differ


# ---------------------------------------------------------------- prices


def test_listed_prices_match_families_and_overrides_parse() -> None:
    assert (listed_price("gpt-4o").input_per_million, listed_price("gpt-4o").output_per_million) == (2.5, 10.0)
    mini = listed_price("gpt-4o-mini-2024-07-18")
    assert (mini.input_per_million, mini.output_per_million) == (0.15, 0.6)
    assert listed_price("gpt-4o-turbo-x") is not None and listed_price("llama3.1") is None
    assert listed_price("o3-mini").input_per_million == 1.1 and listed_price("o3").input_per_million == 2.0
    assert parse_price_overrides(["1.5", "gpt-4o=3"], "--price_in") == {None: 1.5, "gpt-4o": 3.0}
    with pytest.raises(ValueError, match="is not a price"):
        parse_price_overrides(["cheap"], "--price_in")


# ---------------------------------------------------------------- against the bench server

RUNS = {
    "centralized": ["--module", "train_centralized", "--task", "synthetic_object_counting",
                    "--split_sizes", "30,10,10", "--max_epochs", "2", "--max_steps", "2"],
    "homo_partial": ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "40,8,8",
                     "--homo_split_num", "4", "--clients_per_round", "2", "--max_epochs", "3", "--max_steps", "2",
                     "--aggregate_method", "summarization"],
    "hetero": ["--module", "train_hetero_fed", "--task", "synthetic_object_counting",
               "synthetic_multistep_arithmetic", "--split_sizes", "20,6,6", "--max_epochs", "2", "--max_steps", "2",
               "--aggregate_method", "sum_uid"],
}


@pytest.fixture(scope="module")
def bench() -> Any:
    with ServerProcess("--latency", "0") as server:
        yield server


def _bench_spec(argv: list[str]) -> PlanSpec:
    args = parse_args(argv)
    exp = experiment_from_args(args)
    return PlanSpec(experiment=exp, plan=plan_run(exp), test_engine=args.test_engine,
                    evaluation_engine=args.evaluation_engine, use_cache=True, logprobs=True,
                    count_tokens=len, completion=LIMITS)


def _estimate_json(argv: list[str], env: dict[str, str], path: Path) -> dict[str, Any]:
    done = run_main([*argv, "--estimate", "--estimate_json", str(path)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", list(RUNS))
def test_the_count_equals_the_requests_the_bench_server_counted(name: str, bench: ServerProcess,
                                                                tmp_path: Path) -> None:
    env = main_env(bench.base_url, FEDTEXTGRAD_UID="1")
    argv = run_args(tmp_path / "out", "cell", tmp_path / "cache", *RUNS[name])
    bench.reset_stats()
    estimate = _estimate_json(argv, env, tmp_path / "estimate.json")
    assert bench.stats()["requests"] == 0 and bench.stats()["logprob_requests"] == 0  # --estimate calls no LLM
    assert not (tmp_path / "out").exists()  # and writes no run folder
    done = run_main(argv, env)
    assert done.returncode == 0, done.stderr[-2000:]
    stats, run_dir = bench.stats(), tmp_path / "out" / "cell"
    results = json.loads((run_dir / "results.json").read_text())

    plan = plan_calls(_bench_spec(argv), Outcomes.from_run(run_dir))
    assert plan.calls() == stats["requests"] == results["llm"]["calls"]
    assert plan.calls(("logprob",)) == stats["logprob_requests"]
    assert sum(t.cached for t in plan.totals().values()) == results["llm"]["cache_hits"]
    # The a-priori estimate, with its costlier branch, bounds the run from above.
    extra = sum(c["calls"] for c in estimate["conditional"])
    assert estimate["total"]["calls"] + extra >= stats["requests"]
    # Every run records the estimate it started with; the report sets it beside the actual cost.
    assert json.loads((run_dir / "estimate.json").read_text())["total"] == estimate["total"]
    markdown, _, _ = build_report([run_dir])
    assert "### Estimate vs actual" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| cell | "))
    assert row.startswith(f"| cell | {estimate['total']['calls']}")
    assert f"| {stats['requests']} |" in row


def test_a_finished_run_calibrates_tokens_and_time_of_the_next_estimate(bench: ServerProcess, tmp_path: Path) -> None:
    env = main_env(bench.base_url, FEDTEXTGRAD_UID="1")
    first = run_args(tmp_path / "out", "first", tmp_path / "cache", *RUNS["hetero"])
    before = _estimate_json(first, env, tmp_path / "before.json")
    assert "token limits" in before["engines"]["vllm-fake-model"]["completion_source"]
    assert before["seconds"] is None  # nothing measured yet
    assert run_main(first, env).returncode == 0
    run_dir = tmp_path / "out" / "first"
    recorded = json.loads((run_dir / "estimate.json").read_text())["raw_totals"]["vllm-fake-model"]
    llm = json.loads((run_dir / "results.json").read_text())["llm"]
    wall = json.loads((run_dir / "results.json").read_text())["wall_seconds"]

    second = run_args(tmp_path / "out", "second", tmp_path / "cache", *RUNS["hetero"], "--max_epochs", "3")
    after = _estimate_json(second, env, tmp_path / "after.json")
    engine = after["engines"]["vllm-fake-model"]
    assert "1 finished run of vllm-fake-model" in engine["completion_source"]
    expected = (llm["completion_tokens"] / llm["calls"]) / (recorded["completion_tokens"] / recorded["calls"])
    assert engine["completion_factor"] == pytest.approx(expected, rel=1e-3)
    assert engine["seconds_per_call"] == pytest.approx(wall * 16 / llm["calls"])  # --max_concurrency 16
    assert after["seconds"] == pytest.approx(after["total"]["calls"] / 16 * engine["seconds_per_call"])
    # Same data and starting prompt: the zero-shot answers of the first run are in the cache.
    zero_shot = next(p for p in after["phases"] if p["phase"] == "zero-shot")
    assert zero_shot["cached"] == 2 * (6 + 6) and zero_shot["calls"] == 0


def test_estimate_prices_openai_engines_and_fails_bad_prices_in_one_line(tmp_path: Path) -> None:
    env = {**main_env("http://127.0.0.1:9/v1"), "OPENAI_API_KEY": "sk-test-not-used"}
    argv = ["--module", "train_centralized", "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
            "--max_epochs", "1", "--max_steps", "1", "--test_engine", "gpt-4o-mini", "--evaluation_engine", "gpt-4o",
            "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")]
    estimate = _estimate_json(argv, env, tmp_path / "e.json")
    for name, (price_in, price_out) in {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.5, 10.0)}.items():
        totals = estimate["totals"][name]
        assert estimate["engines"][name]["usd"] == pytest.approx(
            (totals["prompt_tokens"] * price_in + totals["completion_tokens"] * price_out) / 1e6)
    assert estimate["usd"] == pytest.approx(sum(e["usd"] for e in estimate["engines"].values()))
    override = _estimate_json([*argv, "--price_in", "gpt-4o=1", "--price_out", "4"], env, tmp_path / "o.json")
    totals = override["totals"]["gpt-4o"]
    assert override["engines"]["gpt-4o"]["usd"] == pytest.approx((totals["prompt_tokens"] + 4 * totals["completion_tokens"]) / 1e6)
    bad = run_main([*argv, "--estimate", "--price_in", "cheap"], env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--price_in" in bad.stderr
    # An estimate calls nothing, so it needs no key; a real start does.
    no_key_env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    assert run_main([*argv, "--estimate"], no_key_env).returncode == 0
    no_key = run_main(argv, no_key_env)
    assert no_key.returncode == 2 and "needs OPENAI_API_KEY" in no_key.stderr


def test_launchers_estimate_the_grid_total_and_its_most_expensive_cells(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTEXTGRAD_", "SEEDS", "METHODS", "VLLM_"))}
    env.update(PYTHON=sys.executable, FEDTEXTGRAD_OUTPUT_DIR=str(tmp_path / "logs"), SEEDS="1 2",
               FEDTEXTGRAD_TEST_ENGINE="vllm-fake-model", FEDTEXTGRAD_EVAL_ENGINE="vllm-fake-model",
               FEDTEXTGRAD_SPLIT_SIZES="9,6,6", FEDTEXTGRAD_ROUNDS="2", TASKS="synthetic_object_counting",
               METHODS="concat sum_uid", HF_HUB_OFFLINE="1")
    done = subprocess.run([str(REPO / "scripts" / "sweep_aggregation.sh"), "--estimate", "--max_steps", "1",
                           "--cache_dir", str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== estimate of the grid: 4 runs ==" in done.stdout
    cells = re.findall(r"^\s+\d\. (\S+): ([\d,]+) calls", done.stdout, re.M)
    calls = {name: int(n.replace(",", "")) for name, n in cells}
    total = int(re.search(r"^total: ([\d,]+) calls", done.stdout, re.M).group(1).replace(",", ""))
    assert len(calls) == 4 and total == sum(calls.values())
    # Costliest first: concatenated prompts are three clients long, so concat cells carry the most tokens,
    # though sum_uid makes one merge call per round more.
    assert [name.split("-")[1] for name, _ in cells] == ["concat", "concat", "sum_uid", "sum_uid"]
    for seed in (1, 2):
        group = "sweep_aggregation_homo/synthetic_object_counting"
        assert calls[f"{group}-sum_uid-seed{seed}"] == calls[f"{group}-concat-seed{seed}"] + 2
    assert not (tmp_path / "logs").exists()  # nothing ran


# ---------------------------------------------------------------- large runs: walked in part, the rest scaled


def _counted(exp: Experiment) -> tuple[Any, int]:
    from utils.estimate.walk import extrapolate, plan_walk

    walk = plan_walk(exp, False, None)
    plan = extrapolate(plan_calls(dataclasses.replace(spec(exp), experiment=walk.experiment, plan=walk.plan)), walk)
    totals = plan.totals()["T"]
    return walk, totals.calls + totals.cached


@pytest.mark.parametrize("argv", [["--max_epochs", "60"], ["--max_epochs", "60", "--homo_split_num", "5",
                                                          "--max_steps", "6"],
                                  ["--max_epochs", "40", "--clients_per_round", "2"]])
def test_a_run_larger_than_the_walk_budget_is_walked_in_part_and_its_calls_come_out_the_same(
        argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.estimate import walk

    exp = experiment_from_args(parse_args(["--module", "train_homo_fed", "--task", "synthetic_object_counting",
                                           "--test_engine", "vllm-x", "--evaluation_engine", "vllm-x", *argv]))
    monkeypatch.setattr(walk, "WALK_BUDGET", 10**9)
    exact_walk, exact = _counted(exp)
    assert not exact_walk.scaled and exact == plan_run(exp).calls()
    for budget in (2000, 300):  # a part of the rounds; a single round, with part of its steps when it is large
        monkeypatch.setattr(walk, "WALK_BUDGET", budget)
        part, scaled = _counted(exp)
        assert part.scaled and part.walked_rounds < exp.rounds
        assert abs(scaled - exact) <= 0.05 * exact, (budget, scaled, exact)


def test_the_walk_of_a_huge_grid_is_bounded_whatever_its_rounds() -> None:
    from utils.estimate.walk import WALK_BUDGET, plan_walk

    for rounds in ("100", "10000"):
        exp = experiment_from_args(parse_args([
            "--module", "train_homo_fed", "--task", "synthetic_object_counting", "--test_engine", "vllm-x",
            "--evaluation_engine", "vllm-x", "--max_epochs", rounds, "--homo_split_num", "100", "--max_steps", "50",
            "--split_sizes", "1000,10,10"]))
        part = plan_walk(exp, False, None)
        assert part.rounds == int(rounds) and part.walked_rounds == 1 and part.walked_steps < 50
        assert part.plan.calls() <= 2 * WALK_BUDGET
