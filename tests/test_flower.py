"""FedTextGrad on Flower: records, node config, the leak guard, and whole runs through Flower's
simulation engine (Ray) and through `flwr run` with a SuperLink this test starts and stops.

Simulations run the real ClientApp in Ray worker processes; they reach the test's LLM servers over
loopback through the environment (LOCAL_BASE_URL, VLLM_BASE_URL, ...), inherited at ray.init.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

import train_homo_fed
from bench.fake_server import FakeServer
from fedtextgrad_flower import client_app
from fedtextgrad_flower.federation import FederationError
from fedtextgrad_flower.node import NodeConfigError, client_id_of, load_own_client, node_args
from fedtextgrad_flower.records import (
    UpdateLimits,
    experiment_from_record,
    experiment_record,
    read_policy,
    short_reason,
    train_content,
    update_content,
    update_from_reply,
    update_limits,
)
from fedtextgrad_flower.run_config import ALLOWED_DIRS_VARIABLE, PATH_KEYS, parse_run_config
from fedtextgrad_flower.server_app import run_server
from fedtextgrad_flower.simulation import simulate as run_in_simulation
from main import main as main_cli
from textgrad import prompts
from textgrad.engine import get_engine
from utils.config import UsageError, parse_args
from utils.federated.client import ClientUpdate, LocalSettings, StepResult, release_update
from utils.federated.runner import load_data
from utils.privacy.leakage import REDACTED, LeakAudit, LeakGuard
from utils.privacy.outbound import ClientPolicy
from utils.tasks.registry import Example

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FAKE_ENGINE = "vllm-fake-model"


@pytest.fixture(autouse=True)
def _operator_allows_the_test_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp takes run-config paths only inside the folders its operator allows."""
    monkeypatch.setenv(ALLOWED_DIRS_VARIABLE, os.pathsep.join([str(tmp_path), str(SHARED_DATA)]))


def tiny_flags(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"module": "train_homo_fed", "task": "synthetic_object_counting", "homo_split_num": 3,
            "max_epochs": 2, "max_steps": 1, "batch_size": 1, "split_sizes": "3,3,3", "seed": 42,
            "aggregate_method": "concat", "test_engine": FAKE_ENGINE, "evaluation_engine": FAKE_ENGINE,
            "output_dir": str(tmp_path), "cache_dir": str(tmp_path / "llm-cache"), "comet_mode": "disabled",
            "node_wait": 60, **extra}


def as_argv(flags: Mapping[str, Any]) -> list[str]:
    return [part for key, value in flags.items() if key != "node_wait" for part in (f"--{key}", str(value))]


class RecordingGrid:
    """The simulation's grid, keeping every reply a client sends."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.replies: list[Message] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies


def simulate(run_config: dict[str, Any], clients: ClientApp = client_app.app,
             num_supernodes: int | None = None) -> RecordingGrid:
    grids: list[RecordingGrid] = []

    def record(grid: Grid) -> RecordingGrid:
        grids.append(RecordingGrid(grid))
        return grids[-1]

    run_in_simulation(run_config, clients, grid_wrapper=record, num_supernodes=num_supernodes)
    return grids[0]


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """results.json and the events, without their wall-clock `time` (two runs compared never share it)."""
    results = json.loads((run_dir / "results.json").read_text())
    events = [{k: v for k, v in json.loads(line).items() if k != "time"}
              for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return results, events


def _live_descendants() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def no_stray_processes() -> Iterator[None]:
    """After the test no process it started (Ray, SuperLink, SuperExec, simulation) is left running."""
    before = {p.pid for p in _live_descendants()}  # e.g. the session's embedded llama.cpp server
    yield
    deadline = time.monotonic() + 15
    stray = [p for p in _live_descendants() if p.pid not in before]
    while stray and time.monotonic() < deadline:
        time.sleep(0.5)
        stray = [p for p in _live_descendants() if p.pid not in before]
    for proc in stray:  # ours by construction: descendants of this test process
        proc.kill()
    assert not stray, f"processes left running: {[(p.pid, p.name()) for p in stray]}"


@pytest.fixture
def fake_llm() -> Iterator[FakeServer]:
    server = FakeServer(latency=0.0).start()
    yield server
    server.stop()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------ fast: records, config, privacy


def _reply(content: RecordDict | None = None, error: Error | None = None, node: int = 7) -> Message:
    metadata = Metadata(run_id=1, message_id="m", src_node_id=node, dst_node_id=0, reply_to_message_id="q",
                        group_id="1", created_at=0.0, ttl=60.0, message_type="train")
    return Message(content=content, error=error, metadata=metadata)


def test_flower_update_survives_the_wire_exactly():
    update = ClientUpdate("client1", 2, "start prompt", "new prompt", steps=[
        StepResult(0, 0.5, None, False, "no_tags", 1), StepResult(1, 1.0, 1.0, True, None, 0)],
        leakage=LeakAudit(3, 0.0, 12, 0.25, "redacted", 1))
    back, report = update_from_reply(_reply(update_content(update, {"calls": 4, "seconds": 1.5})),
                                     "client1", "start prompt", 2, None)
    assert back == update and back.error is None
    assert report == {"calls": 4, "seconds": 1.5}


def test_flower_missing_error_and_misaddressed_replies_become_failed_updates():
    missing, _ = update_from_reply(None, "client0", "p", 1, 30.0)
    assert missing.error == "no reply within 30 s" and missing.prompt == "p" and not missing.steps
    assert update_from_reply(None, "client0", "p", 1, None)[0].error == "no reply before the SuperLink gave up"
    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m"
              "\n  File \"x.py\", line 3\nValueError: boom\n\nException ClientAppException occurred. "
              "Message: boom from client 0'>")
    failed, report = update_from_reply(_reply(error=Error(code=2, reason=reason)), "client0", "p", 1, None)
    assert failed.error == "Flower error 2: boom from client 0" and report == {}
    other = ClientUpdate("client2", 1, "p", "q")
    wrong, _ = update_from_reply(_reply(update_content(other, {})), "client0", "p", 1, None)
    assert wrong.client_id == "client0" and "answered as client 'client2'" in wrong.error
    assert short_reason("line one\nlast line") == "last line"


def test_flower_run_config_is_checked_like_the_command_line(tmp_path):
    args, flower = parse_run_config({"module": "train_hetero_fed", "task": "synthetic_object_counting, GSM8K",
                                     "run_name": "", "round_timeout": 30, "max_epochs": 2,
                                     "output_dir": str(tmp_path)})
    assert args.task == ["synthetic_object_counting", "GSM8K"] and args.run_name is None
    assert args.max_epochs == 2 and flower.round_timeout == 30.0 and flower.node_wait == 120.0
    with pytest.raises(UsageError, match="unknown key 'epochs' in the Flower run config"):
        parse_run_config({"module": "train_homo_fed", "epochs": 3})
    rounds, _ = parse_run_config({"module": "train_homo_fed", "rounds": 3, "output_dir": str(tmp_path)})
    assert rounds.max_epochs == 3  # --rounds, the name --max_epochs is kept beside
    with pytest.raises(UsageError, match="max_steps"):
        parse_run_config({"module": "train_homo_fed", "max_steps": 0})
    for bad in ("soon", -5):
        with pytest.raises(UsageError, match="node_wait in the Flower run config must be a number of seconds"):
            parse_run_config({"module": "train_homo_fed", "node_wait": bad})
    assert flower.max_update_tokens == 0  # 0: four windows of the evaluation engine
    flags = {"module": "train_homo_fed", "output_dir": str(tmp_path)}
    assert parse_run_config({**flags, "max_update_tokens": 5000})[1].max_update_tokens == 5000
    for bad in ("many", -1, 2.5, True):
        with pytest.raises(UsageError, match="max_update_tokens in the Flower run config must be a whole number"):
            parse_run_config({**flags, "max_update_tokens": bad})


@pytest.mark.parametrize(("values", "words"), [
    ({"max_epochs": 10**9}, "--max_epochs 1000000000 is more than 10000"),
    ({"max_epochs": 1e9}, "expected a whole number"),
    ({"screen_margin": float("nan")}, "--screen_margin"),
    ({"request_timeout": float("inf")}, "--request_timeout"),
    ({"round_timeout": float("inf")}, "round_timeout in the Flower run config must be a number of seconds from 0"),
    ({"node_wait": float("nan")}, "node_wait in the Flower run config"),
    ({"max_update_tokens": 10**12}, "max_update_tokens in the Flower run config"),
])
def test_flower_run_config_refuses_what_the_command_line_refuses(values, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        parse_run_config({"module": "train_homo_fed", "test_engine": FAKE_ENGINE, "evaluation_engine": FAKE_ENGINE,
                          **values})


def test_flower_run_config_paths_stay_inside_the_allowed_folders(tmp_path, monkeypatch):
    allowed, second, outside = tmp_path / "allowed", tmp_path / "second", tmp_path / "outside"
    for folder in (allowed, second, outside / "old"):
        folder.mkdir(parents=True)
    (allowed / "link").symlink_to(outside)
    monkeypatch.setenv(ALLOWED_DIRS_VARIABLE, f"{allowed}{os.pathsep}{second}")
    flags = {"module": "train_homo_fed", "task": "synthetic_object_counting"}
    inside = {"output_dir": allowed / "logs", "comet_log_path": second / "comet", "cache_dir": allowed / "cache",
              "data_dir": second}
    args, _ = parse_run_config({**flags, **{key: str(path) for key, path in inside.items()}})
    assert (args.output_dir, args.data_dir) == (str(allowed / "logs"), str(second))
    for key in PATH_KEYS:
        for path in (outside, allowed / ".." / "outside", allowed / "link" / "logs", "/tmp"):
            with pytest.raises(UsageError, match=f"^{key} {re.escape(str(path))} in the Flower run config is "
                                                 f"outside the folders this server allows .*{ALLOWED_DIRS_VARIABLE}"):
                parse_run_config({**flags, key: str(path)})
    with pytest.raises(UsageError, match="--run_name '../escape' is not a plain folder name"):
        parse_run_config({**flags, "output_dir": str(allowed), "run_name": "../escape"})
    # Refused before a resumed run's config.yaml outside is read (its unknown key would be the error).
    (outside / "old" / "config.yaml").write_text("not_a_flag: 1\n")
    with pytest.raises(UsageError, match="is outside the folders"):
        parse_run_config({**flags, "output_dir": str(outside), "run_name": "old", "resume": True})

    # Unset, the ServerApp's working directory is the one allowed folder: the default output_dir "logs" is in it.
    monkeypatch.delenv(ALLOWED_DIRS_VARIABLE)
    monkeypatch.chdir(allowed)
    assert parse_run_config(flags)[0].output_dir == "logs"
    for path in ("../outside", str(outside)):
        with pytest.raises(UsageError, match=re.escape(f"outside the folders this server allows ({allowed})")):
            parse_run_config({**flags, "output_dir": path})


UPDATE = ClientUpdate("client0", 1, "start prompt", "new prompt", steps=[StepResult(0, 0.5, 1.0, True, None, 0)])
STEP = {"step": 0, "batch_accuracy": 0.5, "new_batch_accuracy": None, "accepted": False, "format_failure": None,
        "judge_format_failures": 0}


def _tampered(report: Mapping[str, Any] | None = None, drop: str = "", **fields: Any) -> Message:
    """UPDATE's reply with some fields replaced (any value a ConfigRecord carries) or dropped."""
    content = update_content(UPDATE, {"calls": 3})
    record = {**dict(content["update"]), **fields}
    record.pop(drop, None)
    return _reply(RecordDict({"update": ConfigRecord(record), "report": MetricRecord(report or {"calls": 3})}))


class WordCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return len(text.split())


def test_flower_update_of_the_wrong_shape_is_refused_with_the_reason():
    limits = UpdateLimits(max_tokens=100, max_steps=2, count_tokens=WordCounter())
    steps = json.dumps
    cases = [
        (_tampered(prompt=5), "field 'prompt' is int, not text"),
        (_tampered(prompt=["a", "list"]), "field 'prompt' is list, not text"),
        (_tampered(prompt=b"bytes"), "field 'prompt' is bytes, not text"),
        (_tampered(error=1.5), "field 'error' is float, not text"),
        (_tampered(round=True), "field 'round' is bool, not a whole number"),
        (_tampered(round="1"), "field 'round' is str, not a whole number"),
        (_tampered(drop="start_prompt"), "field 'start_prompt' is missing, not text"),
        (_tampered(steps_json="[{"), "its steps are malformed (Invalid JSON"),
        (_tampered(steps_json=steps([{"step": 0}])), "its steps are malformed (0.batch_accuracy: Field required)"),
        (_tampered(steps_json=steps([{**STEP, "batch_accuracy": "0.5"}])),
         "its steps are malformed (0.batch_accuracy: Input should be a valid number"),
        (_tampered(steps_json=steps({"step": 0})), "its steps are malformed (Input should be a valid array)"),
        (_tampered(steps_json=steps([STEP] * 3)), "it holds 3 steps, more than the round's 2"),
        (_tampered(steps_json=" " * 2001 + "[]"), "its steps take 2003 characters, too many for 2 steps"),
        (_tampered(steps_json=steps([{**STEP, "new_batch_accuracy": 1.5}])),
         "a step's accuracy is not between 0 and 1"),
        (_tampered(round=2), "it is for round 2, not round 1"),
        (_tampered(report={"round": 9}), "its report is not up to 64 named numbers"),
        (_tampered(report={"calls": [1, 2]}), "its report is not up to 64 named numbers"),
        (_reply(RecordDict({"report": MetricRecord({})})), "the reply lacks its 'update' config record"),
    ]
    for reply, reason in cases:
        update, report = update_from_reply(reply, "client0", "global", 1, None, limits)
        assert update.error.startswith("refused update: " + reason), (reason, update.error)
        assert (update.client_id, update.round, update.prompt, update.steps, report) == (
            "client0", 1, "global", [], {})
    assert limits.count_tokens.calls == 0  # no shape problem needed a count
    assert update_from_reply(_tampered(), "client0", "global", 1, None, limits) == (UPDATE, {"calls": 3})


def test_flower_update_over_the_size_limit_is_refused_with_the_reason():
    counter = WordCounter()
    limits = UpdateLimits(max_tokens=100, max_steps=2, count_tokens=counter)

    def outcome(**fields: Any) -> str | None:
        return update_from_reply(_tampered(**fields), "client0", "global", 1, None, limits)[0].error

    assert outcome(prompt="w " * 50) is None and counter.calls == 0  # 100 bytes: within, uncounted
    assert outcome(prompt="w " * 100) is None and counter.calls == 1  # exactly at the limit
    for field in ("prompt", "start_prompt", "error"):
        assert outcome(**{field: "w " * 101}) == (f"refused update: its {field} has 101 tokens, more than "
                                                  "max_update_tokens 100")
    # Far too long to be worth counting (one "word" by the counter, so only the character cap refuses it).
    calls = counter.calls
    assert outcome(prompt="x" * 6401) == ("refused update: its prompt has 6401 characters, far over "
                                          "max_update_tokens 100") and counter.calls == calls
    assert outcome(prompt="x" * 6400) is None


def test_flower_default_update_limit_is_four_windows_of_the_evaluation_engine(fake_llm, monkeypatch):
    monkeypatch.setenv("VLLM_BASE_URL", fake_llm.base_url)
    engine = get_engine(FAKE_ENGINE)
    assert engine.context_window == 8192  # the fake server's n_ctx
    limits = update_limits(engine, max_steps=3)
    assert limits.max_tokens == 4 * 8192 and limits.max_steps == 3
    assert update_limits(engine, 3, max_tokens=500).max_tokens == 500
    reply = _reply(update_content(ClientUpdate("client0", 1, "start", "word " * 40000), {}))
    refused, _ = update_from_reply(reply, "client0", "start", 1, None, limits)
    assert re.fullmatch(r"refused update: its prompt has \d+ tokens, more than max_update_tokens 32768",
                        refused.error), refused.error


def test_flower_node_gets_exactly_its_in_process_shard(tmp_path, shared_data):
    flags = tiny_flags(tmp_path, task="BBH_object_counting", data_dir=str(shared_data), split_sizes="6,3,3")
    args = parse_args(as_argv(flags))
    in_process = train_homo_fed.build_clients(args, load_data(args))
    experiment = experiment_from_record(experiment_record(args, [c.client_id for c in in_process]))
    assert experiment.config.data_dir == str(shared_data.resolve()) and experiment.config.split_sizes == (6, 3, 3)
    for pid, expected in enumerate(in_process):
        node = {"partition-id": pid, "num-partitions": 3}
        client_id = client_id_of(experiment, node)
        client = load_own_client(node_args(experiment, node), node, client_id)
        assert client.client_id == expected.client_id and client.examples == expected.examples
    with pytest.raises(NodeConfigError, match="no partition-id"):
        client_id_of(experiment, {})
    with pytest.raises(NodeConfigError, match="partition-id 3 is not one of the 3 clients"):
        client_id_of(experiment, {"partition-id": 3})
    own = node_args(experiment, {"partition-id": 0, "data-dir": str(tmp_path), "test-engine": "ollama-llama3"})
    assert own.data_dir == str(tmp_path) and own.test_engine == "ollama-llama3"


def test_flower_hetero_node_loads_only_its_own_task(tmp_path):
    args = parse_args(as_argv(tiny_flags(tmp_path, module="train_hetero_fed")) +
                      ["--task", "synthetic_object_counting", "synthetic_word_sorting"])
    experiment = experiment_from_record(experiment_record(args, ["synthetic_object_counting",
                                                                 "synthetic_word_sorting"]))
    node = {"task": "synthetic_word_sorting"}
    assert client_id_of(experiment, node) == "synthetic_word_sorting"
    client = load_own_client(node_args(experiment, node), node, "synthetic_word_sorting")
    assert client.task.name == "synthetic_word_sorting" and len(client.examples) == 3


def test_flower_client_gets_its_policy_and_applies_the_shared_leak_guard():
    """The ClientApp reads its round's policy off the message and runs the same guard as in-process."""
    policy = ClientPolicy(LeakGuard("reject", 6), attack="noise", seed=3)
    content = train_content(experiment_record(parse_args(["--module", "train_homo_fed"]), ["client0"]), "client0",
                            "p", 1, LocalSettings(), policy)
    assert read_policy(content) == policy
    assert read_policy(train_content(content["experiment"], "client0", "p", 1, LocalSettings(),
                                     ClientPolicy())) == ClientPolicy()
    question = "I have a chair, two tables, and a bed. How many objects do I have?"
    update = ClientUpdate("client0", 1, "start", "Think.\nI have a chair,  two tables,\nand a bed. How many objects "
                          "do I have?\nAnswer: N", error="EngineError: echo of " + question)
    release_update(update, [Example(question, "4"), Example("short q", "1")], ClientPolicy())
    assert update.leakage.redacted_spans == 2 and question not in update.error
    assert update.prompt == f"Think.\n{REDACTED}?\nAnswer: N"


class InProcessGrid:
    """A grid whose SuperNodes live in this process: each message is handed to the ClientApp's handler at once
    (the ServerApp's round loop, merges and run folder are the real ones; no Ray, no SuperLink)."""

    def __init__(self, node_configs: list[dict[str, Any]]) -> None:
        self.nodes = {node_id: config for node_id, config in enumerate(node_configs, start=101)}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, node_config=self.nodes[node], state=RecordDict(), run_config={})
            handle = client_app.identify if message.metadata.message_type == MessageType.QUERY else client_app.train
            replies.append(handle(message, context))
        return replies


def test_flower_server_app_merges_many_clients_in_a_tree_as_the_in_process_run_does(tmp_path, monkeypatch):
    """The ServerApp runs the same round loop: 12 clients whose prompts do not fit one merge request of a
    760-token window are merged in a tree, exactly as in-process (same requests: all cache hits)."""
    for name in ("_run_id", "_node_id", "_task_id"):  # what a SuperLink would give this process
        monkeypatch.setattr(TaskIdentity, name, 1 if name == "_run_id" else 0)
    with FakeServer(max_context=760, distinct_edits=True) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        flags = tiny_flags(tmp_path, homo_split_num=12, max_epochs=1, split_sizes="12,3,3",
                           aggregate_method="summarization")
        assert main_cli([*as_argv(flags), "--run_name", "in_process"]) == 0
        server.reset_stats()
        grid = InProcessGrid([{"partition-id": i, "num-partitions": 12} for i in range(12)])
        run_server(grid, {**flags, "run_name": "flower"})
        assert server.chat_count == 0  # every request the Flower run made, the in-process run had made
    ours, _ = read_run(tmp_path / "in_process")
    theirs, _ = read_run(tmp_path / "flower")
    tree = ours["rounds"][0]["merge_tree"]
    assert tree["depth"] >= 2 and tree["levels"][-1] == 1 and tree["requests"] > 2
    assert theirs["rounds"][0]["merge_tree"] == tree and theirs["final_prompt"] == ours["final_prompt"]
    assert theirs["max_prompt_tokens"] == ours["max_prompt_tokens"] == 760 // 5


# ------------------------------------------------------------------ whole runs through Flower


def assert_flower_run_matches_in_process(tmp_path: Path, flags: dict[str, Any]) -> dict[str, Any]:
    """Same flags, seed and response cache: the Flower run must ask exactly the same questions (all
    cache hits, so Flower clients used the same shards and batches) and reach the same prompts and scores."""
    started = time.monotonic()
    assert main_cli([*as_argv(flags), "--run_name", "in_process"]) == 0
    in_process_s = time.monotonic() - started
    started = time.monotonic()
    simulate({**flags, "run_name": "flower"})
    print(f"\nwall time: in-process {in_process_s:.1f} s (LLM calls), Flower simulation "
          f"{time.monotonic() - started:.1f} s (cache hits)")

    ours, our_events = read_run(tmp_path / "in_process")
    theirs, their_events = read_run(tmp_path / "flower")
    for key in ("zero_shot", "best", "final_prompt", "final_test", "clients", "steps", "format_failures"):
        assert theirs[key] == ours[key], key
    for mine, other in zip(ours["rounds"], theirs["rounds"], strict=True):
        for key in ("val", "client_train_accuracy", "aggregate_tokens", "client_prompt_chars", "failed_clients"):
            assert other[key] == mine[key], (key, mine, other)
    for path in sorted((tmp_path / "in_process" / "prompts").rglob("*.txt")):
        assert (tmp_path / "flower" / path.relative_to(tmp_path / "in_process")).read_text() == path.read_text()
    assert [e for e in their_events if e["type"] == "step"] == [e for e in our_events if e["type"] == "step"]

    reports = [e for e in their_events if e["type"] == "flower_client"]
    assert sorted({e["client"] for e in reports}) == ["client0", "client1", "client2"] and len(reports) == 6
    # The clients really trained through their own engines: every request answered from the cache.
    assert sum(e["cache_hits"] for e in reports) > 0 and sum(e["cache_misses"] for e in reports) == 0
    assert theirs["llm"]["cache_misses"] == 0
    return ours


def test_flower_simulation_matches_the_in_process_run(tmp_path, shared_data, local_engine_url, monkeypatch,
                                                      no_stray_processes):
    """The real embedded llama.cpp server, one shared by the test and every simulated client."""
    monkeypatch.setenv("LOCAL_BASE_URL", local_engine_url)
    assert_flower_run_matches_in_process(tmp_path, tiny_flags(
        tmp_path, task="BBH_object_counting", data_dir=str(shared_data), split_sizes="3,2,2", test_engine="local",
        evaluation_engine="local", aggregate_method="summarization", max_tokens=32, feedback_max_tokens=32,
        optimizer_max_tokens=64, merge_max_tokens=64))


def test_flower_simulation_matches_the_in_process_merges(tmp_path, fake_llm, monkeypatch, no_stray_processes):
    """SmolLM2 rarely writes the optimizer's tags, so prompts seldom change above; the fake server's
    replies do, which makes the clients' prompts and the summarized aggregates differ every round."""
    monkeypatch.setenv("VLLM_BASE_URL", fake_llm.base_url)
    ours = assert_flower_run_matches_in_process(tmp_path, tiny_flags(tmp_path, aggregate_method="summarization"))
    assert ours["steps"]["accepted"] > 0
    assert len({(tmp_path / "in_process" / "prompts" / f"round_00{r}" / "global.txt").read_text()
                for r in range(3)}) == 3


def test_flower_client_messages_never_carry_training_examples(tmp_path, make_fake_server, monkeypatch,
                                                              no_stray_processes):
    """An LLM server that echoes every request back, and whose rewrites keep the prompt and quote the
    question their feedback echoed: the optimizer copies the private questions into the new prompt, and
    the clients must strip them before replying. (A rewrite that is its whole request is junk, rejected
    before it could leave: utils.federated.degenerate.)"""
    def echo_request(request: dict) -> tuple[int, dict]:
        """Every reply is the whole request, except a rewrite's (above), as an improved prompt: in the one
        JSON field a structured request asks for, else between the tags."""
        text = re.sub("</?IMPROVED_VARIABLE>", "", "\n".join(str(m["content"]) for m in request["messages"]))
        if request["messages"][0]["content"] == prompts.OPTIMIZER_SYSTEM:
            current = re.search(r"\nCurrent [^\n]*:\n(.*?)\n\n", text, re.DOTALL).group(1)
            question = re.search(r"<INPUT>\n(.*?)\n</INPUT>", text, re.DOTALL).group(1)
            text = (f"{current}\nName each object of the kind the question asks about, count it once, add the "
                    f"counts one by one, and check the total twice before you write it.\nFor example: {question}")
        shape = request.get("response_format")
        if shape:
            schema = shape.get("schema") or shape["json_schema"]["schema"]
            content = json.dumps({schema["required"][0]: text})
        else:
            content = "<IMPROVED_VARIABLE>" + text + "</IMPROVED_VARIABLE>"
        return 200, {"id": "echo", "object": "chat.completion", "created": 0, "model": request["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}]}

    echo = make_fake_server(routes={"/v1/chat/completions": echo_request})
    monkeypatch.setenv("VLLM_BASE_URL", echo.base_url)
    flags = tiny_flags(tmp_path, split_sizes="6,3,3", run_name="echo")
    grid = simulate(flags)

    args = parse_args(as_argv(flags))
    questions = [re.sub(r"\s+", " ", ex.question) for c in train_homo_fed.build_clients(args, load_data(args))
                 for ex in c.examples]
    assert len(questions) == 6
    train_replies = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert len(train_replies) == 6 and not any(r.has_error() for r in train_replies)
    for reply in grid.replies:
        sent = re.sub(r"\s+", " ", json.dumps([dict(record) for record in reply.content.values()]))
        assert not [q for q in questions if q in sent or json.dumps(q)[1:-1] in sent]
    _, events = read_run(tmp_path / "echo")
    # The guard had work to do: without it the questions would have left the clients. Each client's audit
    # reached the server as numbers only.
    audits = [e for e in events if e["type"] == "leak_audit"]
    assert len(audits) == 6 and all(e["longest_run"] < 8 for e in audits)
    # Round 1's rewrites quote the questions (round 2's quote them again, or were skipped or rejected: not
    # asserted).
    first = [e for e in audits if e["round"] == 1]
    assert len(first) == 3 and all(e["written_longest_run"] >= 8 and e["redacted_spans"] > 0 for e in first)


flaky_app = ClientApp()


@flaky_app.query()
def _identify(message: Message, context: Context) -> Message:
    return client_app.identify(message, context)


@flaky_app.train()
def _train_or_fail(message: Message, context: Context) -> Message:
    """partition 1 crashes outright; partition 2's own LLM endpoint (node config) is down; partition 3
    sends a prompt far over four windows of the evaluation engine; partition 4's prompt is not text."""
    partition = int(context.node_config["partition-id"])
    if partition == 1:
        raise RuntimeError("client 1 lost its disk")
    if partition == 2:
        context.node_config["evaluation-engine"] = "sglang-down-model"
    reply = client_app.train(message, context)
    if partition == 3:
        reply.content["update"]["prompt"] = "Count every object. " * 20000
    if partition == 4:
        reply.content["update"]["prompt"] = ["Count", "every", "object."]
    return reply


def test_flower_failing_clients_do_not_stop_the_round(tmp_path, fake_llm, monkeypatch, no_stray_processes):
    monkeypatch.setenv("VLLM_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("SGLANG_BASE_URL", _closed_port_url())
    # Ray workers import this module to run flaky_app.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(Path(__file__).parent)]))
    # A sixth node (partition-id 5) is no client of this run: it is left out, not an error.
    simulate(tiny_flags(tmp_path, run_name="flaky", homo_split_num=5, split_sizes="5,3,3"), clients=flaky_app,
             num_supernodes=6)

    results, events = read_run(tmp_path / "flaky")
    assert results["rounds_completed"] == 2
    failed = ["client1", "client2", "client3", "client4"]
    for summary in results["rounds"]:
        assert summary["failed_clients"] == failed
        assert list(summary["client_train_accuracy"]) == ["client0"]
    assert [e["clients"] for e in events if e["type"] == "aggregate"] == [["client0"], ["client0"]]
    failures = {(e["round"], e["client"]): e["error"] for e in events if e["type"] == "client_failed"}
    assert sorted(failures) == [(r, c) for r in (1, 2) for c in failed]
    assert failures[(1, "client1")].startswith("Flower error") and "client 1 lost its disk" in failures[(1, "client1")]
    assert failures[(1, "client2")].startswith("EngineError") and "sglang" in failures[(1, "client2")]
    # The fake server's window is 8192 tokens: the default limit is four of them.
    assert re.fullmatch(r"refused update: its prompt has \d+ tokens, more than max_update_tokens 32768",
                        failures[(1, "client3")]), failures[(1, "client3")]
    assert failures[(2, "client4")] == "refused update: field 'prompt' is list, not text"
    # Nothing of a refused update was merged or written.
    saved = {path.name for path in (tmp_path / "flaky" / "prompts").rglob("client_*.txt")}
    assert saved == {"client_client0.txt"}
    assert not any(b"Count every object. Count every" in path.read_bytes()
                   for path in (tmp_path / "flaky").rglob("*") if path.is_file())


def test_flower_run_stops_before_writing_when_a_client_has_no_supernode(tmp_path, fake_llm, monkeypatch,
                                                                         no_stray_processes):
    monkeypatch.setenv("VLLM_BASE_URL", fake_llm.base_url)
    with pytest.raises(FederationError, match=r"after 3 s no SuperNode has joined as client\(s\) client2: "
                                              r"start one per client with --node-config 'partition-id=N'"):
        run_in_simulation(tiny_flags(tmp_path, run_name="short", node_wait=3), num_supernodes=2)
    assert not (tmp_path / "short").exists()


def test_flower_run_command_runs_a_local_federation(tmp_path, fake_llm, no_stray_processes):
    """docs/flower.md's commands: a SuperLink we start (and stop by its pid), then `flwr run .`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    # Every Flower process comes from this interpreter's environment, activated or not: the SuperLink
    # starts `flower-superexec` (and `flwr run` a SuperLink) by PATH lookup, so the interpreter's bin/
    # goes first on a PATH that holds no other Python (a venv that is not activated).
    bin_dir = Path(sys.executable).parent
    # Ray's session folder goes in a folder of ours, removed after (short: Ray's socket paths in it must stay
    # under 108 characters), so the test leaves nothing in /tmp.
    ray_dir = tempfile.mkdtemp(prefix="ftg-ray-", dir="/tmp")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": port,
           "FLWR_DISABLE_UPDATE_CHECK": "1", "VLLM_BASE_URL": fake_llm.base_url, "RAY_TMPDIR": ray_dir,
           "PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])}
    superlink = subprocess.Popen(
        [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", port, "--log-file", str(tmp_path / "superlink.log")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in tiny_flags(tmp_path, run_name="cli").items())
        done = subprocess.run([str(bin_dir / "flwr"), "run", ".", "--stream", "--federation-config",
                               "num-supernodes=3", "--run-config", run_config],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert "Successfully started run" in done.stdout, done.stdout + done.stderr
    finally:
        superlink.terminate()
        superlink.wait(timeout=30)
        shutil.rmtree(ray_dir, ignore_errors=True)
    results, events = read_run(tmp_path / "cli")
    assert results["rounds_completed"] == 2 and results["clients"] == ["client0", "client1", "client2"]
    assert len([e for e in events if e["type"] == "flower_client"]) == 6
    assert "== train_homo_fed on synthetic_object_counting" in done.stdout
