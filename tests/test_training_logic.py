"""Fast tests of the round loop, local step and aggregation with a scripted engine."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

from utils.federated.aggregation import aggregate_prompts, concat_prompts
from utils.federated.client import (
    ClientUpdate,
    Engines,
    LocalSettings,
    keep_new_prompt,
    local_step,
    train_client,
)
from utils.federated.experiment import Client, Experiment
from utils.federated.plan import select_clients
from utils.federated.rounds import run_experiment
from utils.reporting.tracking import open_run_log
from utils.tasks.registry import STARTING_INSTRUCTIONS as STARTING
from utils.tasks.registry import Example, resolve_task, served_prompt
from utils.tasks.synthetic import generate_examples

COUNTING = resolve_task("synthetic_object_counting")
SORTING = resolve_task("synthetic_word_sorting")
ARITH = resolve_task("synthetic_multistep_arithmetic")


def right_answer(question: str, system: str | None) -> str:
    """Answers correctly only when the system prompt says to count carefully: training helps."""
    return "Answer: 3" if system and "Count carefully" in system else "Answer: 0"


def make_experiment(tasks, clients, *, rounds=2, per_round=None, max_steps=2, method="concat", proximal=False):
    val = {t.name: (t, generate_examples(t.name, 4, seed=1)) for t in tasks}
    test = {t.name: (t, generate_examples(t.name, 4, seed=2)) for t in tasks}
    return Experiment(module="test", tasks=tasks, clients=clients, val_sets=val, test_sets=test,
                      aggregate_method=method, rounds=rounds, clients_per_round=per_round or len(clients),
                      settings=LocalSettings(max_steps=max_steps, batch_size=2, proximal_update=proximal, seed=7),
                      run_larger_model=False)


def run(tmp_path: Path, exp: Experiment, engine: ScriptedEngine, train_round=None, resume=False, judge=False):
    log = open_run_log(tmp_path / "run", "disabled", "p", tmp_path / "comet")
    engines = Engines(test=engine, evaluation=engine, judge=engine if judge else None)
    return run_experiment(exp, engines, log, resume=resume, train_round=train_round)


def homo_clients(n=3, size=6):
    examples = generate_examples(COUNTING.name, n * size, seed=3)
    return [Client(f"client{i}", COUNTING, examples[i * size:(i + 1) * size]) for i in range(n)]


def recording(exp: Experiment, engines: Engines, seen: list[ClientUpdate]):
    def train_round(planned, prompt):
        updates = [train_client(c.client.client_id, c.client.task, c.batches, prompt, planned.index, engines,
                                exp.settings) for c in planned.clients]
        seen.extend(updates)
        return updates
    return train_round


def test_clients_start_each_round_from_the_previous_aggregate(tmp_path):
    versions = iter(range(1000))  # every optimizer call writes a different prompt, so clients differ
    engine = ScriptedEngine(answer=right_answer, improve=lambda cur: cur.strip()
                            + f" Count carefully (v{next(versions)}).")
    exp = make_experiment([COUNTING], homo_clients(), rounds=3, method="summarization")
    seen: list[ClientUpdate] = []
    results = run(tmp_path, exp, engine, recording(exp, Engines(engine, engine), seen))
    aggregates = {r: (tmp_path / "run" / "prompts" / f"round_{r:03d}" / "global.txt").read_text().strip()
                  for r in range(0, 4)}
    for update in seen:
        assert update.start_prompt.strip() == aggregates[update.round - 1]
    # and the aggregate really is a merge of the clients' prompts, not one client's prompt
    assert aggregates[1].startswith("MERGED(")
    assert results["final_prompt"].strip() == aggregates[3]


def test_exactly_max_steps_optimizer_calls_per_client_per_round(tmp_path):
    engine = ScriptedEngine()
    exp = make_experiment([COUNTING], homo_clients(), rounds=2, max_steps=3)
    results = run(tmp_path, exp, engine)
    assert engine.count("optimizer") == 3 * 2 * 3
    assert results["steps"]["total"] == 3 * 2 * 3
    assert engine.count("feedback") == 3 * 2 * 3 * 2  # batch size 2: one feedback call per example


def test_hetero_evaluates_every_task(tmp_path):
    tasks = [COUNTING, SORTING, ARITH]
    clients = [Client(t.name, t, generate_examples(t.name, 5, seed=4)) for t in tasks]
    exp = make_experiment(tasks, clients, rounds=1, method="concat")
    results = run(tmp_path, exp, ScriptedEngine())
    for scores in (results["zero_shot"]["val"], results["rounds"][0]["val"], results["final_test"]["best"]):
        assert set(scores) == {t.name for t in tasks} | {"mean"}
    final = results["final_prompt"]
    # the trained text carries no answer-format line; each task's served form carries its own, once
    assert not any(t.format_instruction in final for t in tasks)
    for t in tasks:
        served = results["served_prompts"]["last"][t.name]
        assert served == final + "\n" + t.format_instruction
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["type"] == "evaluation" and e["round"] == 1 and e["split"] == "val"]
    assert evals and all(t.name in evals[0] for t in tasks)


def test_partial_participation(tmp_path):
    engine = ScriptedEngine()
    exp = make_experiment([COUNTING], homo_clients(5, 4), rounds=3, per_round=2)
    results = run(tmp_path, exp, engine)
    assert [len(r["clients"]) for r in results["rounds"]] == [2, 2, 2]
    assert engine.count("optimizer") == 2 * 3 * 2
    chosen = [tuple(r["clients"]) for r in results["rounds"]]
    assert chosen == [tuple(select_clients([f"client{i}" for i in range(5)], 2, 7, r)) for r in (1, 2, 3)]
    assert len(set(chosen)) > 1  # the choice changes between rounds


@pytest.mark.parametrize(("old", "new", "proximal", "keep"), [
    (0.5, 0.5, False, True), (0.5, 0.0, False, False), (0.5, 1.0, False, True),
    (0.5, 0.5, True, False), (0.5, 1.0, True, True), (1.0, 1.0, True, True), (0.0, 0.5, True, True),
    (0.5, 0.0, True, False),
])
def test_keep_rules(old, new, proximal, keep):
    assert keep_new_prompt(old, new, proximal) is keep


def _step(engine, proximal):
    batch = [Example("I have a cup. How many cups?", "3"), Example("I have a pen. How many pens?", "3")]
    return local_step(COUNTING.starting_prompt(), batch, COUNTING, Engines(engine, engine),
                      LocalSettings(proximal_update=proximal))


def test_local_step_reverts_when_worse_and_keeps_when_equal_unless_proximal():
    worse = ScriptedEngine(answer=lambda q, s: "Answer: 0" if "Count carefully" in (s or "") else "Answer: 3")
    prompt, result = _step(worse, proximal=False)
    assert prompt == COUNTING.starting_prompt() and not result.accepted and result.new_batch_accuracy == 0.0
    same = ScriptedEngine(answer=lambda q, s: "Answer: 3")
    prompt, result = _step(same, proximal=False)
    assert "Count carefully" in prompt and result.accepted
    prompt, result = _step(ScriptedEngine(answer=lambda q, s: "Answer: 3"), proximal=True)
    assert "Count carefully" in prompt and result.accepted  # perfect batch is kept under proximal
    half = ScriptedEngine(answer=lambda q, s: "Answer: 3" if "one" in q or "cup" in q else "Answer: 1")
    prompt, result = _step(half, proximal=True)
    assert prompt == COUNTING.starting_prompt() and not result.accepted  # equal, not better: reverted


def test_format_failures_are_counted_not_raised():
    no_tags = ScriptedEngine(improve=lambda cur: None)
    prompt, result = _step(no_tags, proximal=False)
    assert prompt == COUNTING.starting_prompt() and result.format_failure == "no_tags"
    assert no_tags.count("answer") == 2  # no re-score without a new prompt


def test_an_edit_without_format_line_is_served_with_it_and_kept():
    EDIT = "Count each listed item once, then add them up."
    engine = ScriptedEngine(answer=lambda q, s: "Answer: 3", improve=lambda cur: EDIT)
    prompt, result = _step(engine, proximal=False)
    assert prompt == EDIT and result.accepted and result.format_failure is None
    systems = [system for kind, system, _ in engine.calls if kind == "answer"]
    assert systems[:2] == [STARTING + "\n" + COUNTING.format_instruction] * 2  # forward pass
    assert systems[2:] == [EDIT + "\n" + COUNTING.format_instruction] * 2  # re-score
    optimizer_request = next(p for kind, _, p in engine.calls if kind == "optimizer")
    assert COUNTING.format_instruction not in optimizer_request  # the format line is never trained


def test_starting_prompt_is_instructions_only():
    for task in (COUNTING, SORTING, resolve_task("BBH_navigate"), resolve_task("GSM8K")):
        assert task.starting_prompt() == STARTING
        assert "Answer:" not in task.starting_prompt()


def test_concat_removes_exact_duplicates_in_client_order():
    assert concat_prompts(["b", "a", "b", " a ", "c"]) == "b\n\na\n\nc"
    merged = aggregate_prompts(["x " + COUNTING.format_instruction, "x " + COUNTING.format_instruction],
                               "concat", [COUNTING], None)
    assert merged.prompt == "x " + COUNTING.format_instruction


@pytest.mark.parametrize("task", [COUNTING, SORTING, resolve_task("BBH_date_understanding"),
                                  resolve_task("BBH_navigate"), resolve_task("BBH_dyck_languages")])
def test_merges_append_no_format_line_and_serving_adds_only_the_tasks_own(task):
    engine = ScriptedEngine()
    engine.generate = lambda *a, **k: "<MERGED_PROMPT>Think first. Then answer.</MERGED_PROMPT>"
    merged = aggregate_prompts(["one", "two"], "summarization", [task, COUNTING, SORTING], engine)
    assert merged.prompt == "Think first. Then answer." and merged.failure is None
    served = served_prompt(merged.prompt, task)
    assert served == "Think first. Then answer.\n" + task.format_instruction
    others = {t.format_instruction for t in (COUNTING, SORTING)} - {task.format_instruction}
    assert not any(o in served for o in others)


def test_merge_without_tags_falls_back_to_concat_and_counts():
    engine = ScriptedEngine()
    engine.generate = lambda *a, **k: "Sure! Here is a merged prompt: be careful."
    merged = aggregate_prompts(["one", "two"], "sum_uid", [COUNTING], engine)
    assert merged.format_failure and merged.failure == "no_tags"
    assert merged.prompt.startswith("one\n\ntwo")


def test_uid_guidance_only_in_sum_uid():
    from utils.federated.aggregation import UID_GUIDANCE, merge_request
    assert UID_GUIDANCE in merge_request(["a", "b"], [COUNTING], uid=True)
    assert UID_GUIDANCE not in merge_request(["a", "b"], [COUNTING], uid=False)


def test_one_failing_client_does_not_stop_the_round(tmp_path):
    engine = ScriptedEngine()
    exp = make_experiment([COUNTING], homo_clients(), rounds=1)
    broken = exp.clients[1]
    broken.examples = []  # sampling from no examples raises inside that client only
    results = run(tmp_path, exp, engine)
    assert results["rounds"][0]["failed_clients"] == ["client1"]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["client"] for e in events if e["type"] == "client_failed"] == ["client1"]
    # The merge saw the clients that returned a prompt, never the failed one's start prompt.
    assert [e["clients"] for e in events if e["type"] == "aggregate"] == [["client0", "client2"]]


def test_resume_continues_from_the_checkpoint(tmp_path):
    engine = ScriptedEngine(answer=right_answer)
    full = run(tmp_path / "full", make_experiment([COUNTING], homo_clients(), rounds=3), engine)

    class Stop(Exception):
        pass

    exp = make_experiment([COUNTING], homo_clients(), rounds=3)
    engines = Engines(engine, engine)
    calls = {"n": 0}

    def dies_in_round_2(planned, prompt):
        if planned.index == 2:
            raise Stop
        calls["n"] += 1
        return [train_client(c.client.client_id, c.client.task, c.batches, prompt, planned.index, engines,
                             exp.settings) for c in planned.clients]

    with pytest.raises(Stop):
        run(tmp_path / "cut", exp, engine, dies_in_round_2)
    resumed = run(tmp_path / "cut", make_experiment([COUNTING], homo_clients(), rounds=3), engine, resume=True)
    for key in ("zero_shot", "final_test", "best"):
        assert resumed[key] == full[key]
    assert [r["val"] for r in resumed["rounds"]] == [r["val"] for r in full["rounds"]]
    rounds_in_events = [json.loads(x)["round"] for x in (tmp_path / "cut" / "run" / "events.jsonl").read_text()
                        .splitlines() if json.loads(x)["type"] == "round"]
    assert rounds_in_events == [1, 2, 3]


def test_prompt_texts_carry_no_training_examples(tmp_path):
    engine = ScriptedEngine()
    exp = make_experiment([COUNTING], homo_clients(), rounds=1)
    seen: list[ClientUpdate] = []
    run(tmp_path, exp, engine, recording(exp, Engines(engine, engine), seen))
    questions = [ex.question for c in exp.clients for ex in c.examples]
    for update in seen:
        record = json.dumps(update.to_record())
        assert not any(q in record for q in questions)
    assert re.search(r"round_001", str(list((tmp_path / "run" / "prompts").iterdir())))


def test_llm_totals_count_only_this_runs_calls_across_runs_and_resume(tmp_path, fake_server, monkeypatch):
    from textgrad.engine import get_engine

    monkeypatch.setenv("VLLM_BASE_URL", fake_server.base_url)
    engine = get_engine("vllm-fake-model")
    first = run(tmp_path / "a", make_experiment([COUNTING], homo_clients(), rounds=1), engine)
    assert first["llm"]["calls"] == fake_server.chat_count > 0
    before = fake_server.chat_count
    # Another seed: with the first run's seed the loaders would replay its batches, all from the cache.
    second_exp = make_experiment([COUNTING], homo_clients(), rounds=2, max_steps=1)
    second_exp.settings = replace(second_exp.settings, seed=8)
    second = run(tmp_path / "b", second_exp, engine)
    assert second["llm"]["calls"] + second["llm"]["cache_hits"] > 0
    assert second["llm"]["calls"] == fake_server.chat_count - before
    rounds_sum = sum(r["llm"]["calls"] for r in second["rounds"])
    assert 0 < rounds_sum <= second["llm"]["calls"]


def test_hetero_answer_requests_carry_exactly_their_own_tasks_format_line(tmp_path, shared_data, monkeypatch):
    from bench.fake_server import FakeServer
    from bench.fake_server.replies import request_kind
    from main import main

    names = ["BBH_date_understanding", "BBH_boolean_expressions"]  # option letter vs True/False lines
    with FakeServer() as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        assert main(["--module", "train_hetero_fed", "--task", *names, "--data_dir", str(shared_data),
                     "--split_sizes", "3,3,3", "--max_epochs", "1", "--max_steps", "1", "--batch_size", "2",
                     "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model",
                     "--do_not_run_larger_model", "--aggregate_method", "summarization", "--output_dir",
                     str(tmp_path), "--run_name", "run", "--comet_mode", "disabled"]) == 0
        seen = [messages for messages, _ in server.stats["prompts_seen"] if request_kind(messages) == "answer"]
    lines = {name: resolve_task(name).format_instruction for name in names}
    checked = 0
    for messages in seen:
        system, question = messages[0]["content"], messages[-1]["content"]
        # date_understanding questions list options; boolean_expressions ones are "... is"
        own = names[0] if "Options:" in question else names[1]
        assert system.count(lines[own]) == 1 and system.endswith("\n" + lines[own])
        assert all(line not in system for name, line in lines.items() if name != own)
        checked += 1
    # zero-shot val and test (2 tasks x 3 + 3), forward and re-score (2 clients x 2 x 2), round validation
    assert checked >= 2 * 6 + 2 * 2 + 2 * 3
    trained = (tmp_path / "run" / "prompts" / "round_001" / "global.txt").read_text()
    assert not any(line in trained for line in lines.values())
    served = tmp_path / "run" / "prompts" / "round_000"
    for name, line in lines.items():
        assert (served / f"global.served.{name}.txt").read_text() == STARTING + "\n" + line + "\n"
