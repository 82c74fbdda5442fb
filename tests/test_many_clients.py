"""Many clients (issue 27): merges that always fit, in a tree; a merged prompt's budget; no text ever cut.

Fast tests of the grouping and the tree's shape, merges against the bench server (whose token count is
characters / 4, rounded up, so sizes here are written in characters), and whole runs: the issue's
200-client GSM8K run in a 4096-token window, and a run in a tight window whose every request is checked
for a text that was cut.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest

from bench.fake_server import FakeServer
from bench.fake_server.replies import request_kind
from main import main
from textgrad.engine import get_engine
from utils.federated.aggregation import (
    UID_GUIDANCE,
    aggregate_prompts,
    default_max_prompt_tokens,
    merge_limits,
)
from utils.federated.client import LocalSettings
from utils.federated.experiment import Client, Experiment
from utils.federated.merge_tree import MergeLimits, fitting_groups, planned_levels
from utils.federated.plan import plan_run, select_clients
from utils.reporting.plots import run_series
from utils.tasks.data import load_task_data
from utils.tasks.registry import Example, resolve_task

COUNTING = resolve_task("synthetic_object_counting")
PROMPT_BLOCK = re.compile(r"<PROMPT>\n(.*?)\n</PROMPT>", re.DOTALL)
# What a shortened text looked like before issue 27 ("[... 312 tokens cut ...]", "[... 2 earlier feedback
# items dropped ...]"), and any other bracketed ellipsis a shortening could leave behind.
CUT_MARK = re.compile(r"\[\.\.\.|\.\.\.\]|tokens cut|items dropped")


def tokens(text: str) -> int:
    """The bench server's count."""
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------- groups and the tree's shape


def test_groups_are_runs_of_consecutive_clients_the_fewest_that_fit_and_even() -> None:
    clients = [f"client{i}" for i in range(7)]

    def named(sizes: list[int], capacity: int) -> list[list[str]]:
        return [[clients[i] for i in group] for group in fitting_groups(sizes, capacity)]

    # 7 prompts of 4 tokens, 20 per request: two groups; 4 + 3 rather than the greedy 5 + 2.
    assert named([4] * 7, 20) == [["client0", "client1", "client2", "client3"], ["client4", "client5", "client6"]]
    assert named([4] * 7, 28) == [clients]  # all fit one request
    assert named([4] * 7, 4) == [[c] for c in clients]  # one per request: nothing to merge together
    # Uneven sizes: the split into two groups whose larger one is smallest (12), in client order.
    assert named([10, 1, 1, 1, 10], 13) == [["client0", "client1", "client2"], ["client3", "client4"]]
    assert named([10, 1, 1, 1, 10], 12) == [["client0", "client1", "client2"], ["client3", "client4"]]
    # Three groups are needed at 11; their largest can be 10 (alone), so the small ones go together.
    assert named([10, 1, 1, 1, 10], 11) == [["client0"], ["client1", "client2", "client3"], ["client4"]]
    with pytest.raises(ValueError, match="a prompt of 30 tokens cannot fit a group of 20"):
        fitting_groups([5, 30], 20)


def test_the_tree_for_given_sizes() -> None:
    # 200 prompts of 70 tokens, 2800 per request, merges of at most 819: 5 requests of 40 prompts, then the
    # five merges (819 each) three to a request: 2 requests (3 + 2), then 1.
    assert planned_levels(200, 70, 2800, 819) == [5, 2, 1]
    # 1000: 25 requests of 40; their 25 merges three to a request, the 25th going up alone (8 requests);
    # those 9 in 3 requests; then 1.
    assert planned_levels(1000, 70, 2800, 819) == [25, 8, 3, 1]
    assert planned_levels(10, 100, 2800, 819) == [1]  # 1000 tokens: one request
    assert planned_levels(40, 70, 2800, 819) == [1] and planned_levels(41, 70, 2800, 819) == [2, 1]
    assert planned_levels(1, 70, 2800, 819) == []  # one prompt: nothing to merge
    assert planned_levels(5, 100, 150, 819) == []  # no two fit a request: no tree
    limits = MergeLimits(max_prompt_tokens=819, capacity=2800, client_prompt=70)
    assert limits.levels(200) == [5, 2, 1] and limits.levels(2) == [1]
    assert MergeLimits(819, None, 70).levels(200) == []  # concat: no merge request
    assert MergeLimits(819, 150, 100).levels(5) == [1]  # the plan still counts the one request a round tries


def test_the_budget_is_a_fifth_of_the_smaller_window_and_must_leave_room_for_two_prompts() -> None:
    assert default_max_prompt_tokens(4096) == 819 and default_max_prompt_tokens(8192) == 1638

    def limits(window: int, flag: int | None = None, method: str = "summarization") -> MergeLimits:
        return merge_limits(tokens, 8192, window, method, [COUNTING], "Count the objects.", 1, 768, flag, True)

    assert limits(4096).max_prompt_tokens == 819 and limits(4096).capacity > 2 * (819 + 9)
    assert limits(4096, 1000).max_prompt_tokens == 1000
    assert limits(4096, 5000, "concat") == MergeLimits(5000, None, tokens("Count the objects.") * 5 // 4 + 9)
    # Given, a budget a merge request cannot hold twice is refused with the largest that fits.
    with pytest.raises(ValueError, match=r"cannot hold two prompts of 1500 tokens .*use at most "
                                         r"--max_prompt_tokens 1\d\d\d, or a larger window"):
        limits(4096, 1500)
    # Not given, the default is lowered to what fits; a window too small to merge two prompts is refused.
    small = limits(640)
    assert small.max_prompt_tokens < 640 // 5 and small.capacity >= 2 * (small.max_prompt_tokens + 9)
    with pytest.raises(ValueError, match="use --aggregate_method concat"):
        limits(300)


# ---------------------------------------------------------------- merges against the bench server


def client_prompt(i: int) -> str:
    """90 tokens (360 characters): nine rules of client i and a closing line every client shares."""
    rules = " ".join(f"Client {i:02d} rule {k}: count kind {k} twice." for k in range(9))
    return f"{rules} Answer with care."


def merge_requests(server: FakeServer) -> list[list[str]]:
    """The prompts of each merge request the server answered, in the order they arrived."""
    return [PROMPT_BLOCK.findall(body["messages"][-1]["content"]) for body in server.chat_requests
            if request_kind(body["messages"]) == "merge"]


@pytest.mark.parametrize("method", ["summarization", "sum_uid"])
def test_prompts_that_do_not_fit_one_request_are_merged_in_groups_of_consecutive_clients(method: str,
                                                                                         monkeypatch: Any) -> None:
    prompts = [client_prompt(i) for i in range(12)]
    assert {tokens(p) for p in prompts} == {90}
    # A 760-token window with a 120-token budget and 100-token merge replies holds 385 tokens of numbered
    # prompts (9 tokens of numbering each; 345 beside sum_uid's guidance): three of these (297), not four (396).
    with FakeServer(max_context=760) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        engine = get_engine("vllm-fake-model")
        merged = aggregate_prompts(prompts, method, [COUNTING], engine, max_tokens=100, max_prompt_tokens=120)
        requests = merge_requests(server)
        stats = server.stats
        guided = [UID_GUIDANCE in body["messages"][-1]["content"] for body in server.chat_requests]
    tree = merged.tree
    assert tree.levels == [4, 2, 1] and tree.depth == 3 and tree.requests == 7 and tree.inputs == 12
    level_one = [[prompts.index(p) for p in request] for request in requests if request[0] in prompts]
    assert sorted(level_one) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert len(requests) == 7 and stats["context_rejections"] == 0 and guided == [method == "sum_uid"] * 7
    assert (tree.retries, tree.over_budget, tree.left_out, merged.failure) == (0, 0, 0, None)
    assert tokens(merged.prompt) <= 120 and merged.prompt.endswith("Answer with care.")
    assert engine.stats.context_shortened == 0 and engine.stats.context_skipped == 0


def test_a_prompt_too_long_for_any_merge_request_is_left_out_whole_and_counted(monkeypatch: Any,
                                                                               caplog: Any) -> None:
    prompts = [client_prompt(0), client_prompt(1) * 5, client_prompt(2)]  # the middle one: about 520 tokens
    with FakeServer(max_context=760) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        merged = aggregate_prompts(prompts, "summarization", [COUNTING], get_engine("vllm-fake-model"),
                                   max_tokens=100, max_prompt_tokens=120)
        requests = merge_requests(server)
    assert merged.tree.left_out == 1 and merged.tree.levels == [1]
    assert requests == [[prompts[0], prompts[2]]]  # the others, whole; the long one in no request
    assert "1 of 3 client prompts are too long for a merge request" in caplog.text


SENTENCES = ["Count every object once.", "Say the total last.", "Read the question twice.",
             "List the objects first.", "Ignore the animals."]


@pytest.mark.parametrize("behaviour, asked, over_budget", [("obey", 1, 0), ("second_try", 2, 0), ("ignore", 2, 1)])
def test_every_merge_request_states_the_budget_and_an_over_long_merge_is_asked_for_again_once(
        behaviour: str, asked: int, over_budget: int, monkeypatch: Any) -> None:
    prompts = [" ".join(SENTENCES[:3]) + " Be exact.", " ".join(SENTENCES[2:]) + " Be exact."]
    with FakeServer(merge_budget=behaviour) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        merged = aggregate_prompts(prompts, "summarization", [COUNTING], get_engine("vllm-fake-model"),
                                   max_prompt_tokens=20)
        sent = [body["messages"][-1]["content"] for body in server.chat_requests]
    assert len(sent) == asked and all("must not exceed 20 tokens (about 15 words)" in request for request in sent)
    # The merge of all six sentences (31 tokens) is over 20 unless the server keeps the budget.
    assert ("came out at 31 tokens, over that limit" in sent[-1]) == (asked == 2)
    assert (merged.tree.levels, merged.tree.retries, merged.tree.over_budget) == ([asked], asked - 1, over_budget)
    assert (tokens(merged.prompt) <= 20) == (over_budget == 0) and merged.failure is None


# ---------------------------------------------------------------- whole runs


def run_homo(tmp_path: Path, *flags: str) -> tuple[dict[str, Any], Path]:
    argv = ["--module", "train_homo_fed", "--test_engine", "vllm-fake-model", "--evaluation_engine",
            "vllm-fake-model", "--max_epochs", "1", "--max_steps", "1", "--batch_size", "2", "--comet_mode",
            "disabled", "--output_dir", str(tmp_path), "--run_name", "run", "--aggregate_method", "summarization",
            *flags]
    assert main(argv) == 0
    return json.loads((tmp_path / "run" / "results.json").read_text()), tmp_path / "run"


def kept_client_prompts(run_dir: Path) -> dict[str, str]:
    """The prompt each client sent whose local step was kept (so it differs from the starting prompt)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kept = {e["client"] for e in events if e["type"] == "step" and e["accepted"]}
    return {c: (run_dir / "prompts" / "round_001" / f"client_{c}.txt").read_text().strip() for c in sorted(kept)}


def test_the_200_client_gsm8k_run_of_the_issue_merges_in_a_tree_that_fits(tmp_path: Path, shared_data: Path,
                                                                          monkeypatch: Any) -> None:
    # Every edit its own, as a real model's: 200 clients return about 180 different prompts, far more
    # than one merge request of a 4096-token window holds.
    with FakeServer(max_context=4096, distinct_edits=True, prompts_kept=4000) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        results, run_dir = run_homo(tmp_path, "--task", "GSM8K", "--data_dir", str(shared_data), "--homo_split_num",
                                    "200", "--split_sizes", "400,20,20", "--max_context", "4096")
        requests = merge_requests(server)
        rejections = server.stats["context_rejections"]
    tree = results["rounds"][0]["merge_tree"]
    assert tree["depth"] >= 2 and tree["levels"][-1] == 1 and tree["requests"] == len(requests) >= 3
    assert (tree["over_budget"], tree["left_out"], tree["failures"]) == (0, 0, {})
    assert results["max_prompt_tokens"] == 819 and results["rounds"][0]["aggregate_tokens"] <= 819
    context = results["context"]
    assert (context["shortened_requests"], context["overflow_replies"], context["skipped_calls"],
            context["dropped_items"], rejections) == (0, 0, 0, 0, 0)
    assert context["windows"]["vllm-fake-model"]["largest_request"] <= 4096
    # Every kept client edit reaches a merge request whole.
    kept = kept_client_prompts(run_dir)
    merged_inputs = {prompt for request in requests for prompt in request}
    assert len(kept) > 150 and all(prompt in merged_inputs for prompt in kept.values())


def test_no_text_is_cut_in_a_tight_window_every_request_carries_its_texts_whole(tmp_path: Path,
                                                                                monkeypatch: Any) -> None:
    with FakeServer(max_context=1024, distinct_edits=True) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        results, run_dir = run_homo(tmp_path, "--task", "synthetic_object_counting", "--homo_split_num", "24",
                                    "--split_sizes", "48,6,6", "--max_context", "1024")
        bodies = server.chat_requests
    assert results["rounds"][0]["merge_tree"]["depth"] >= 2
    data = load_task_data(COUNTING, None, (48, 6, 6), 42)
    questions = {example.question for example in data.train + data.val + data.test}
    for body in bodies:
        messages = body["messages"]
        assert not any(CUT_MARK.search(m["content"]) for m in messages), messages
        if request_kind(messages) == "answer":  # the served prompt and one of the run's questions, both whole
            assert messages[0]["content"].endswith(COUNTING.format_instruction)
            assert messages[-1]["content"] in questions
    kept = kept_client_prompts(run_dir)
    merged_inputs = {prompt for body in bodies if request_kind(body["messages"]) == "merge"
                     for prompt in PROMPT_BLOCK.findall(body["messages"][-1]["content"])}
    assert kept and all(prompt in merged_inputs for prompt in kept.values())


def test_a_budget_a_merge_request_cannot_hold_twice_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: Any,
                                                                         capsys: Any) -> None:
    with FakeServer(max_context=4096) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        code = main(["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--test_engine",
                     "vllm-fake-model", "--evaluation_engine", "vllm-fake-model", "--max_prompt_tokens", "3000",
                     "--output_dir", str(tmp_path), "--run_name", "bad", "--comet_mode", "disabled"])
        asked = server.chat_count
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and asked == 0
    assert re.fullmatch(r"error: a merge request in the 4096-token window of the evaluation engine cannot hold two "
                        r"prompts of 3000 tokens .*use at most --max_prompt_tokens \d+, or a larger window .*\n", err)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- sampling clients at scale


def thousand_clients(per_round: int, limits: MergeLimits | None = None) -> Experiment:
    clients = [Client(f"client{i}", COUNTING, [Example(f"c{i} question {k}?", str(k)) for k in range(2)])
               for i in range(1000)]
    return Experiment(module="train_homo_fed", tasks=[COUNTING], clients=clients,
                      val_sets={COUNTING.name: (COUNTING, [Example("v?", "1")] * 5)},
                      test_sets={COUNTING.name: (COUNTING, [Example("t?", "1")] * 5)},
                      aggregate_method="summarization", rounds=3, clients_per_round=per_round,
                      settings=LocalSettings(max_steps=1, batch_size=2, seed=42), run_larger_model=False,
                      merge_limits=limits)


def test_sampling_is_a_seeded_draw_per_round_the_same_every_time() -> None:
    ten = [f"client{i}" for i in range(10)]
    # Recorded once: a change here changes which clients every published run with --clients_per_round trained.
    assert select_clients(ten, 3, 42, 1) == ["client1", "client4", "client6"]
    assert select_clients(ten, 3, 42, 2) == ["client6", "client8", "client9"]
    ids = [f"client{i}" for i in range(1000)]
    draws = [select_clients(ids, 50, 42, r) for r in range(1, 21)]
    assert draws == [select_clients(ids, 50, 42, r) for r in range(1, 21)]  # the same every time
    assert all(len(set(d)) == 50 and d == sorted(d, key=ids.index) for d in draws)  # 50 distinct, in client order
    assert len({tuple(d) for d in draws}) == 20 and select_clients(ids, 50, 43, 1) != draws[0]
    assert select_clients(ids, 1000, 42, 1) == ids


def test_the_plan_counts_only_the_sampled_clients_and_foresees_their_merge_tree() -> None:
    limits = MergeLimits(max_prompt_tokens=819, capacity=2800, client_prompt=70)
    plan = plan_run(thousand_clients(50, limits))
    for planned in plan.rounds:
        assert planned.client_ids == select_clients([f"client{i}" for i in range(1000)], 50, 42, planned.index)
        assert planned.step_calls == 50 * (2 + 2 + 1 + 2)  # 50 sampled clients x one step of batch 2
        # 50 prompts of 70 tokens (3500) do not fit 2800: 2 requests of 25, then 1.
        assert planned.merge_levels == (2, 1) and planned.merge == 3
    every = plan_run(thousand_clients(1000, limits))
    assert every.rounds[0].step_calls == 1000 * 7 and every.rounds[0].merge_levels == (25, 8, 3, 1)
    # The progress bars' and the ETA's totals are the plan's: zero-shot 5 + 5, then per round 350 step calls,
    # 3 merges and 5 validation answers, and the last round's test of 5.
    assert plan.calls() == 10 + 3 * (350 + 3 + 5) + 5


def test_estimate_counts_only_the_sampled_clients(shared_data: Path, capsys: Any) -> None:
    assert main(["--module", "train_homo_fed", "--task", "GSM8K", "--data_dir", str(shared_data), "--homo_split_num",
                 "1000", "--split_sizes", "2000,10,10", "--max_steps", "1", "--batch_size", "2", "--clients_per_round",
                 "10", "--max_epochs", "2", "--test_engine", "vllm-fake-model", "--evaluation_engine",
                 "vllm-fake-model", "--do_not_run_larger_model", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "1000 clients (10 per round)" in out
    rows = {line[:29].strip(): line.split()[-4] for line in out.splitlines() if line.startswith("round ")}
    assert rows["round 1 local steps"] == rows["round 2 local steps"] == "70"  # 10 clients x (3 x 2 + 1)
    assert rows["round 1 merge"] == "1"


def test_a_run_of_many_clients_plots_their_mean_per_round_not_a_line_each() -> None:
    rounds = [{"round": r, "val": {"mean": 0.5}, "aggregate_tokens": 10, "client_prompt_tokens": {"client0": 5},
               "client_train_accuracy": {f"client{i + r}": (0.0 if i % 2 else 1.0) for i in range(20)}}
              for r in (1, 2)]
    results = {"tasks": [COUNTING.name], "clients": [f"client{i}" for i in range(1000)], "rounds": rounds,
               "zero_shot": {"val": {"mean": 0.25}}, "starting_prompt_tokens": 5}
    (training,) = run_series(results)["client_train_accuracy.png"]
    assert training.xs == [1, 2] and training.ys == [0.5, 0.5] and training.yerr == [0.5, 0.5]
    assert training.label == "mean over the round's clients (± std)"
    few = {**results, "rounds": [{**r, "client_train_accuracy": {"client0": 1.0, "client1": 0.0}} for r in rounds]}
    assert [s.label for s in run_series(few)["client_train_accuracy.png"]] == ["client0", "client1"]


def test_a_concatenation_over_the_budget_says_so_before_its_requests_go_out(tmp_path: Path, monkeypatch: Any,
                                                                            caplog: Any) -> None:
    seen_at_warning: list[list[dict[str, Any]]] = []

    class Snapshot(logging.Handler):  # what the server had received when the warning was given
        def emit(self, record: logging.LogRecord) -> None:
            if "concatenated prompt" in record.getMessage():
                seen_at_warning.append(server.chat_requests)

    with FakeServer(distinct_edits=True) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        logging.getLogger("utils.federated.aggregation").addHandler(snapshot := Snapshot())
        try:
            results, run_dir = run_homo(tmp_path, "--task", "synthetic_object_counting", "--homo_split_num", "6",
                                        "--split_sizes", "12,4,4", "--aggregate_method", "concat",
                                        "--max_prompt_tokens", "60")
        finally:
            logging.getLogger("utils.federated.aggregation").removeHandler(snapshot)
        everything = server.chat_requests
    tokens_of_global = results["rounds"][0]["aggregate_tokens"]
    assert tokens_of_global > 60 and results["max_prompt_tokens"] == 60 and results["rounds"][0]["merge_tree"] is None
    warning = next(r.getMessage() for r in caplog.records if "concatenated prompt" in r.getMessage())
    assert warning.startswith(f"round 1: the concatenated prompt has {tokens_of_global} tokens, over the 60 that "
                              "leave its requests room in the 8192-token window of vllm-fake-model")
    assert all(option in warning for option in ("--aggregate_method summarization", "--max_context",
                                                "--clients_per_round"))
    # Given before any request with the concatenated prompt went out (its validation came after).
    served = (run_dir / "prompts" / "round_001" / "global.txt").read_text().strip()

    def with_it(bodies: list[dict[str, Any]]) -> int:
        return sum(body["messages"][0]["content"].startswith(served) for body in bodies)

    assert len(seen_at_warning) == 1 and with_it(seen_at_warning[0]) == 0 and with_it(everything) >= 4


def test_a_budget_the_estimates_tokens_refuse_but_the_servers_allow_does_not_stop_the_run(
        tmp_path: Path, monkeypatch: Any) -> None:
    # The run's own estimate counts tokens with the estimate, which is never below the server's tokenizer, so
    # it may refuse a --max_prompt_tokens the real check allowed. That must cost the estimate, not the run.
    from utils.config import UsageError
    from utils.federated import runner

    real_fit = runner.fit_merges

    def refuse_without_engines(args: Any, exp: Any, engines: Any) -> Any:
        if engines is None and not args.estimate:
            raise UsageError("--max_prompt_tokens 300 is too large for a merge request (estimated)")
        return real_fit(args, exp, engines)

    monkeypatch.setattr(runner, "fit_merges", refuse_without_engines)
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        results, run_dir = run_homo(tmp_path, "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
                                    "--max_prompt_tokens", "300", "--max_context", "4096")
    assert results["max_prompt_tokens"] == 300 and results["rounds_completed"] == 1
    assert json.loads((run_dir / "estimate.json").read_text())["total"]["calls"] > 0
