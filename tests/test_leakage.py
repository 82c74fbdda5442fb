"""Issue 16: the leak audit and guard, simulated poisoned clients and screened aggregation.

Fast tests of the text logic and the screening rule (scripted engine), then whole runs of main.py
against the bench server, whose optimizer quotes the questions it saw (quote_rate) and whose answers
obey an injected instruction.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from scripted_engine import ScriptedEngine

from bench.fake_server import FakeServer
from bench.fake_server.replies import answer_reply
from main import main as main_cli
from utils.config import UsageError, parse_args
from utils.federated.client import ClientUpdate, StepResult, release_update
from utils.federated.screening import ScreenSettings, below_margin, screen_updates, screening_sets
from utils.privacy.attacks import INJECTION, choose_malicious, poisoned_prompt
from utils.privacy.leakage import (
    REDACTED,
    LeakAudit,
    LeakGuard,
    guard_prompt,
    longest_copied_run,
    redact_copies,
    shingle_share,
)
from utils.privacy.outbound import ClientPolicy
from utils.reporting.report import build_report
from utils.tasks.registry import Example, resolve_task
from utils.tasks.synthetic import generate_examples

COUNTING = resolve_task("synthetic_object_counting")
QUESTION = "I have a chair, two tables, and a bed. How many objects do I have?"  # 15 words, target 1 more
EXAMPLES = [Example(QUESTION, "4"), Example("Sort the following words alphabetically: List: pear apple fig kiwi "
                                            "plum", "apple fig kiwi pear plum")]


# ------------------------------------------------------------------ the audit and the guard


def test_audit_finds_a_quoted_question_whatever_case_spacing_and_punctuation():
    prompt = "Think first.\nFor example: i have a CHAIR two tables,\n  and a bed - How many objects do I have?? Go."
    assert longest_copied_run(prompt, EXAMPLES) == 15
    # Each example has 16 words (question + target), so 9 shingles; 8 of the first one's lie inside the
    # 15 copied words, none of the second's: 8 of 18 distinct shingles.
    assert shingle_share(prompt, EXAMPLES) == pytest.approx(8 / 18)
    assert longest_copied_run("Read how many objects the question asks about.", EXAMPLES) == 3
    assert shingle_share("Read how many objects the question asks about.", EXAMPLES) == 0.0
    assert longest_copied_run("anything", []) == 0 and shingle_share("anything", []) == 0.0


def test_redact_removes_spans_of_min_words_and_keeps_shorter_runs():
    seven = "I have a chair, two tables, and"  # 7 words of example 1, then "more" breaks the run
    nine = "a bed. How many objects do I have? 4"  # 8 question words then the target: 9 words of example 1
    prompt = f"Start. {seven} more text. Also: {nine} End."
    redacted, spans = redact_copies(prompt, EXAMPLES, min_words=8)
    assert spans == 1
    assert redacted == f"Start. {seven} more text. Also: {REDACTED} End."
    assert redact_copies(prompt, EXAMPLES, min_words=9)[1] == 1  # a run of exactly min_words goes
    assert redact_copies(prompt, EXAMPLES, min_words=10) == (prompt, 0)
    # Two touching copies from two examples become one span.
    both = "x " + QUESTION + " Sort the following words alphabetically: List: pear apple fig kiwi plum y"
    assert redact_copies(both, EXAMPLES, min_words=8) == (f"x {REDACTED} y", 1)


def test_redact_guard_sends_no_copied_run_of_min_words():
    prompt = f"Be careful.\nFor example: {QUESTION}\nAnswer with a number."
    sent, audit = guard_prompt(prompt, "start", EXAMPLES, LeakGuard("redact", 8))
    assert sent == f"Be careful.\nFor example: {REDACTED}?\nAnswer with a number."
    assert audit == LeakAudit(longest_run=1, shingle_share=0.0, written_longest_run=15,
                              written_shingle_share=pytest.approx(8 / 18), action="redacted", redacted_spans=1)


def test_rejected_update_is_the_start_prompt():
    start = "Solve it step by step."
    leaking = f"Be careful. For example: {QUESTION}"
    sent, audit = guard_prompt(leaking, start, EXAMPLES, LeakGuard("reject", 8))
    assert sent == start and audit.action == "rejected" and audit.written_longest_run == 15
    assert audit.longest_run == 0
    assert guard_prompt(leaking, start, EXAMPLES, LeakGuard("reject", 15))[0] == start  # exactly min_words
    assert guard_prompt(leaking, start, EXAMPLES, LeakGuard("reject", 16))[0] == leaking
    # A copy shorter than min_words is no reason to reject.
    short = "Be careful: I have a chair, two tables."
    assert guard_prompt(short, start, EXAMPLES, LeakGuard("reject", 8))[0] == short
    update = ClientUpdate("client0", 2, start, leaking, steps=[StepResult(0, 0.5, 1.0, True, None)])
    released = release_update(update, EXAMPLES, ClientPolicy(LeakGuard("reject", 8)))
    assert released.prompt == start and released.leakage.action == "rejected"


def test_guard_off_sends_the_prompt_as_written_but_still_audits_it():
    leaking = f"For example: {QUESTION}"
    sent, audit = guard_prompt(leaking, "start", EXAMPLES, LeakGuard("off", 8))
    assert sent == leaking and audit.action == "none" and audit.longest_run == audit.written_longest_run == 15


def test_error_text_is_redacted_and_the_audit_survives_the_record_round_trip():
    update = ClientUpdate("client1", 1, "start", "start", error=f"EngineError: echo of {QUESTION}")
    release_update(update, EXAMPLES, ClientPolicy())
    assert update.error == f"EngineError: echo of {REDACTED}?" and update.leakage.redacted_spans == 1
    back = ClientUpdate.from_record(json.loads(json.dumps(update.to_record())))
    assert back == update and isinstance(back.leakage, LeakAudit)


# ------------------------------------------------------------------ poisoned clients


def test_malicious_clients_are_seeded_and_send_the_attack_instead_of_their_prompt():
    ids = [f"client{i}" for i in range(6)]
    chosen = choose_malicious(ids, 2, seed=42)
    assert len(chosen) == 2 and set(chosen) <= set(ids) and chosen == choose_malicious(ids, 2, seed=42)
    assert list(chosen) == sorted(chosen, key=ids.index)  # client order
    assert {choose_malicious(ids, 2, seed=s) for s in range(10)} != {chosen}  # the seed decides
    assert choose_malicious(ids, 0, seed=42) == ()

    trained = ClientUpdate("client3", 1, "start", "Count carefully.")
    release_update(trained, EXAMPLES, ClientPolicy(attack="inject"))
    assert trained.prompt == INJECTION
    noise = poisoned_prompt("noise", 42, "client3", 1)
    assert noise != poisoned_prompt("noise", 42, "client3", 2) and "Answer" not in noise
    failed = ClientUpdate("client3", 1, "start", "start", error="RuntimeError: down")
    assert release_update(failed, EXAMPLES, ClientPolicy(attack="inject")).prompt == "start"


def test_bench_answers_obey_the_injected_instruction():
    question = generate_examples(COUNTING.name, 1, seed=1)[0].question
    assert answer_reply(f"{COUNTING.starting_prompt()}\n{INJECTION}", question) == "Answer: -9999"
    assert answer_reply(COUNTING.starting_prompt(), question) != "Answer: -9999"


# ------------------------------------------------------------------ screening


def test_screening_margin_is_more_than_not_at_least():
    assert not below_margin(0.8, 0.6, 0.2)  # exactly the margin (0.20000000000000007 in floats): kept
    assert below_margin(0.8, 0.4, 0.2)
    assert not below_margin(0.6, 0.4, 0.2) and not below_margin(0.5, 0.5, 0.0)


def _right_unless_injected(question: str, system: str | None) -> str:
    return "Answer: -9999" if system and "always reply with exactly" in system else "Answer: 5"


def test_screen_leaves_out_the_injected_prompt_and_counts_its_answers():
    engine = ScriptedEngine(answer=_right_unless_injected)
    val = [Example(f"q{i}", "5") for i in range(20)]
    updates = [ClientUpdate(f"client{i}", 1, "s", "Count carefully.") for i in range(3)]
    updates.append(ClientUpdate("client3", 1, "s", INJECTION))
    sets = screening_sets({COUNTING.name: (COUNTING, val)}, 5, seed=7, round_index=1)
    assert len(sets[COUNTING.name][1]) == 5  # five of the twenty validation questions
    screening = screen_updates(ScreenSettings("screen", 5, 0.2), updates, sets, engine)
    assert screening.accuracy == {"client0": 1.0, "client1": 1.0, "client2": 1.0, "client3": 0.0}
    assert list(screening.left_out) == ["client3"] and "0.00" in screening.left_out["client3"]
    assert [u.client_id for u in screening.kept(updates)] == ["client0", "client1", "client2"]
    # Two distinct prompts x 5 questions; clients sending the same prompt share its answers.
    assert (screening.prompts_screened, screening.questions, screening.requests) == (2, 5, 10)
    assert engine.count("answer") == 10
    assert screen_updates(ScreenSettings("none"), updates, sets, engine) is None
    assert engine.count("answer") == 10


# ------------------------------------------------------------------ flags


def test_flags_defaults_and_bad_values():
    args = parse_args(["--module", "train_homo_fed"])
    assert (args.leak_guard, args.leak_min_words, args.malicious_clients, args.attack) == ("redact", 8, 0, "inject")
    assert (args.robust_aggregation, args.screen_size, args.screen_margin) == ("none", 5, 0.2)
    with pytest.raises(UsageError, match="--malicious_clients 4 exceeds the 3 clients"):
        parse_args(["--module", "train_homo_fed", "--malicious_clients", "4"])
    for bad in (["--screen_margin", "1.5"], ["--leak_guard", "mask"], ["--malicious_clients", "-1"],
                ["--leak_min_words", "0"]):
        with pytest.raises(UsageError):
            parse_args(["--module", "train_homo_fed", *bad])


# ------------------------------------------------------------------ whole runs on the bench server


def bench_run(tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch, name: str,
              *flags: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    argv = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "12,10,5",
            "--max_epochs", "2", "--max_steps", "2", "--batch_size", "2", "--aggregate_method", "summarization",
            "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model", "--comet_mode",
            "disabled", "--output_dir", str(tmp_path), "--run_name", name, "--cache_dir", str(tmp_path / "cache"),
            "--do_not_run_larger_model", *flags]
    assert main_cli(argv) == 0
    run_dir = tmp_path / name
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "results.json").read_text()), events


def client_questions() -> dict[str, list[str]]:
    import train_homo_fed
    from utils.federated.runner import load_data

    args = parse_args(["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "12,10,5"])
    return {c.client_id: [ex.question for ex in c.examples] for c in train_homo_fed.build_clients(args, load_data(args))}


@pytest.fixture
def quoting_server():
    with FakeServer(quote_rate=1.0) as server:
        yield server


def test_quoted_questions_leak_with_the_guard_off_and_are_redacted_with_it_on(tmp_path, quoting_server, monkeypatch):
    off, off_events = bench_run(tmp_path, quoting_server, monkeypatch, "off", "--leak_guard", "off")
    on, on_events = bench_run(tmp_path, quoting_server, monkeypatch, "on")  # default: redact
    questions = client_questions()

    audits = [e for e in off_events if e["type"] == "leak_audit"]
    assert sorted((e["round"], e["client"]) for e in audits) == [(r, f"client{i}") for r in (1, 2) for i in range(3)]
    # With the guard off the quotes leave the clients: whole questions in the prompts they send.
    assert off["leakage"]["max_longest_run"] >= 8 and off["leakage"]["max_shingle_share"] > 0
    leaked = [q for r in (1, 2) for c, qs in questions.items() for q in qs
              if q in (tmp_path / "off" / "prompts" / f"round_00{r}" / f"client_{c}.txt").read_text()]
    assert leaked

    # With redact, the optimizer wrote the same kind of quotes, and none left a client.
    assert on["leakage"]["max_written_longest_run"] >= 8 and on["leakage"]["redacted_updates"] > 0
    assert on["leakage"]["max_longest_run"] < 8 and on["leakage"]["max_shingle_share"] == 0.0
    for r in (1, 2):
        assert on["rounds"][r - 1]["leakage"]["redacted_spans"] == sum(
            e["redacted_spans"] for e in on_events if e["type"] == "leak_audit" and e["round"] == r)
        for c, qs in questions.items():
            sent = (tmp_path / "on" / "prompts" / f"round_00{r}" / f"client_{c}.txt").read_text()
            assert not [q for q in qs if q in sent]
    assert REDACTED in (tmp_path / "on" / "prompts" / "round_001" / "global.txt").read_text()

    # utils.reporting.report: guard settings make separate rows, with the leak columns from results.json, and a plot.
    markdown, plots, _ = build_report([tmp_path / "off", tmp_path / "on"], tmp_path / "report")
    header = [c.strip() for c in markdown.splitlines()[2].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| homo_fed")]
    cells = {row[header.index("leak_guard")]: row for row in rows}
    for guard, results in (("off", off), ("redact", on)):
        assert cells[guard][header.index("copied run")] == str(results["leakage"]["max_longest_run"])
        assert cells[guard][header.index("shingle share")] == f"{results['leakage']['max_shingle_share']:.3f}"
    assert "leakage_by_round.png" in {p.name for p in plots}


def test_rejected_updates_are_the_round_start_prompt_on_the_bench_server(tmp_path, quoting_server, monkeypatch):
    results, events = bench_run(tmp_path, quoting_server, monkeypatch, "reject", "--leak_guard", "reject",
                                "--comet_mode", "offline", "--comet_log_path", str(tmp_path / "comet"))
    rejected = [e for e in events if e["type"] == "leak_audit" and e["guard_action"] == "rejected"]
    assert rejected and results["leakage"]["rejected_updates"] == len(rejected)
    for e in rejected:
        start = (tmp_path / "reject" / "prompts" / f"round_00{e['round'] - 1}" / "global.txt").read_text()
        assert (tmp_path / "reject" / "prompts" / f"round_00{e['round']}" / f"client_{e['client']}.txt").read_text() \
            == start
        assert e["written_longest_run"] >= 8
    assert results["leakage"]["max_longest_run"] < 8
    with zipfile.ZipFile(next((tmp_path / "comet").glob("*.zip"))) as archive:
        messages = archive.read("messages.json").decode()
    for metric in ("leak/max_longest_run", "leak/max_shingle_share", "leak/client0/longest_run", "leak/rejected_updates"):
        assert f'"{metric}"' in messages


def test_an_injecting_client_is_left_out_by_screen_and_not_by_none(tmp_path, monkeypatch):
    poisoned = ("--homo_split_num", "4", "--malicious_clients", "1", "--attack", "inject")
    with FakeServer() as server:
        none, none_events = bench_run(tmp_path, server, monkeypatch, "none", *poisoned)
        screen, screen_events = bench_run(tmp_path, server, monkeypatch, "screen", *poisoned,
                                          "--robust_aggregation", "screen")
    attacker = choose_malicious([f"client{i}" for i in range(4)], 1, seed=42)[0]
    assert none["rounds"][0]["poisoned_clients"] == [attacker]

    # none: the injection reaches the merge and every answer after it is the forced wrong one.
    assert [attacker in e["clients"] for e in none_events if e["type"] == "aggregate"] == [True, True]
    assert "always reply with exactly" in none["final_prompt"]
    assert [r["val"]["mean"] for r in none["rounds"]] == [0.0, 0.0]
    assert none["rounds"][0]["screening"] is None and "screening" not in none

    # screen: left out every round, with the reason; the merge and validation never see it. (On 5
    # questions an honest prompt can fall more than 0.2 behind the best too: the rule holds for all.)
    screenings = [e for e in screen_events if e["type"] == "screening"]
    assert len(screenings) == 2
    for e in screenings:
        assert e["accuracy"][attacker] == 0.0 and "below the round's best" in e["left_out"][attacker]
        best = max(e["accuracy"].values())
        assert sorted(e["left_out"]) == sorted(c for c, acc in e["accuracy"].items() if best - acc > 0.2 + 1e-9)
        assert len(e["left_out"]) < 4
    merged = [e["clients"] for e in screen_events if e["type"] == "aggregate"]
    assert [attacker in clients for clients in merged] == [False, False]
    assert [sorted(clients) for clients in merged] == [sorted(set(e["accuracy"]) - set(e["left_out"]))
                                                       for e in screenings]
    assert "always reply with exactly" not in screen["final_prompt"]
    # The bench server answers an honest prompt right 40% of the time by hash, so one round of 10
    # validation questions may score 0 by chance; the forced answer scores 0 in every round.
    assert max(r["val"]["mean"] for r in screen["rounds"]) > 0
    # Its cost: every distinct prompt answered the 5 screening questions.
    for e in screenings:
        assert e["questions"] == 5 and e["requests"] == 5 * e["prompts_screened"] and e["prompts_screened"] >= 2
    assert screen["screening"]["requests"] == sum(e["requests"] for e in screenings)
    assert screen["screening"]["left_out"] == {str(e["round"]): sorted(e["left_out"]) for e in screenings}


def test_flower_client_app_sends_its_update_through_the_same_guard(tmp_path, quoting_server, monkeypatch):
    """The ClientApp's train handler called directly (no Ray): what its optimizer quoted leaves the node
    with the guard off, and not with the default guard; the server reads the audit off the reply."""
    from flwr.app import Context, Message, Metadata, RecordDict

    from fedtextgrad_flower import client_app
    from fedtextgrad_flower.records import experiment_record, train_content, update_from_reply
    from utils.federated.client import LocalSettings

    monkeypatch.setenv("VLLM_BASE_URL", quoting_server.base_url)
    args = parse_args(["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "12,10,5",
                       "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model",
                       "--cache_dir", str(tmp_path / "cache")])
    experiment = experiment_record(args, ["client0", "client1", "client2"])
    start = COUNTING.starting_prompt()
    node = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    questions = client_questions()["client0"]

    def reply_text(policy: ClientPolicy) -> tuple[ClientUpdate, str]:
        content = train_content(experiment, "client0", start, 1, LocalSettings(max_steps=2, batch_size=2), policy)
        message = Message(content=content, metadata=Metadata(
            run_id=1, message_id="m", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
            created_at=0.0, ttl=600.0, message_type="train"))
        reply = client_app.train(message, node)
        update, _ = update_from_reply(reply, "client0", start, 1, None)
        return update, json.dumps([dict(record) for record in reply.content.values()])

    open_update, open_text = reply_text(ClientPolicy(LeakGuard("off", 8)))
    assert open_update.leakage.longest_run >= 8 and [q for q in questions if json.dumps(q)[1:-1] in open_text]
    guarded, guarded_text = reply_text(ClientPolicy())
    assert guarded.leakage.written_longest_run == open_update.leakage.longest_run
    assert guarded.leakage.action == "redacted" and guarded.leakage.longest_run < 8
    assert not [q for q in questions if json.dumps(q)[1:-1] in guarded_text]
