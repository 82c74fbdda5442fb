"""Fast tests of the round loop's retries when the LLM endpoint fails mid-run (a scripted engine that
raises EngineError). The same behaviour against a real server process: tests/test_kill_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scripted_engine import ScriptedEngine

from textgrad.errors import EngineError
from utils.federated import phases
from utils.federated.client import Engines, LocalSettings
from utils.federated.experiment import Client, Experiment
from utils.federated.phases import RunStopped
from utils.federated.rounds import run_experiment
from utils.reporting.tracking import open_run_log
from utils.tasks.registry import resolve_task
from utils.tasks.synthetic import generate_examples

COUNTING = resolve_task("synthetic_object_counting")


class FailingEngine(ScriptedEngine):
    """Fails the first failures[kind] calls of a kind. failing: every call fails, but the server still
    answers its health check (overloaded); down: every call and the health check fail."""

    def __init__(self, failures: dict[str, int] | None = None) -> None:
        super().__init__()
        self.failures = dict(failures or {})
        self.failing = self.down = False

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: object) -> str:
        kind = self.kind_of(system_prompt)
        with self._lock:
            fail = self.down or self.failing or self.failures.get(kind, 0) > 0
            if fail and kind in self.failures:
                self.failures[kind] -= 1
        if fail:
            raise EngineError(f"scripted {kind} call failed after its retries")
        return super().generate(prompt, system_prompt, **kwargs)

    __call__ = generate

    def check_available(self) -> None:
        if self.down:
            raise EngineError("cannot reach the scripted endpoint")


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phases, "PHASE_RETRY_WAIT_S", 0.0)


def experiment(rounds_: int = 2) -> Experiment:
    examples = generate_examples(COUNTING.name, 12, seed=3)
    clients = [Client(f"client{i}", COUNTING, examples[i * 4:(i + 1) * 4]) for i in range(3)]
    sets = {COUNTING.name: (COUNTING, generate_examples(COUNTING.name, 4, seed=1))}
    return Experiment(module="test", tasks=[COUNTING], clients=clients, val_sets=sets, test_sets=sets,
                      aggregate_method="summarization", rounds=rounds_, clients_per_round=3,
                      settings=LocalSettings(max_steps=1, batch_size=2, seed=7), run_larger_model=False)


def run(run_dir: Path, engine: ScriptedEngine, rounds_: int = 2, resume: bool = False) -> dict:
    log = open_run_log(run_dir, "disabled", "p", run_dir / "comet")
    return run_experiment(experiment(rounds_), Engines(engine, engine), log, resume=resume)


def found(results: dict) -> dict:
    return {k: results[k] for k in ("zero_shot", "best", "final_prompt", "final_test", "steps", "format_failures")} | {
        "val": [r["val"] for r in results["rounds"]]}


def round_events(run_dir: Path) -> list[int]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e["round"] for e in events if e["type"] == "round"]


def test_a_client_that_loses_the_endpoint_retries_its_round_and_the_results_do_not_change(tmp_path, capsys):
    clean = run(tmp_path / "clean", ScriptedEngine())
    flaky = run(tmp_path / "flaky", FailingEngine({"optimizer": 1}))
    assert found(flaky) == found(clean)
    assert flaky["rounds"][0]["failed_clients"] == []
    assert round_events(tmp_path / "flaky") == [1, 2]
    assert "round 1 failed" in capsys.readouterr().err


def test_an_endpoint_that_still_answers_gets_three_tries_a_dead_one_two(tmp_path, capsys):
    engine = FailingEngine()
    run(tmp_path / "run", engine, rounds_=1)
    engine.failing = True
    with pytest.raises(RunStopped, match="round 2 failed 3 times"):
        run(tmp_path / "run", engine, resume=True)
    assert capsys.readouterr().err.count("warning: round 2 failed") == 2
    engine.failing, engine.down = False, True
    with pytest.raises(RunStopped, match="round 2 failed 2 times"):
        run(tmp_path / "run", engine, resume=True)
    assert capsys.readouterr().err.count("warning: round 2 failed") == 1


def test_a_dead_endpoint_stops_the_run_after_one_retry_then_resume_finishes_it(tmp_path):
    reference = run(tmp_path / "reference", ScriptedEngine())
    engine = FailingEngine()
    run(tmp_path / "run", engine, rounds_=1)
    checkpoint = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    events = (tmp_path / "run" / "events.jsonl").read_text()[:checkpoint["events_size"]]

    engine.down = True
    with pytest.raises(RunStopped, match="round 2 failed 2 times.*--resume --run_name run"):
        run(tmp_path / "run", engine, resume=True)
    stopped = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert stopped["round"] == 1 and stopped["history"] == checkpoint["history"]
    # Nothing of the failed tries is left in events.jsonl: the checkpoint's events, then the resume.
    after = (tmp_path / "run" / "events.jsonl").read_text()
    assert after.startswith(events)
    assert [{k: v for k, v in json.loads(line).items() if k != "time"} for line in after[len(events):].splitlines()] \
        == [{"type": "resume", "from_round": 1}]

    engine.down = False
    resumed = run(tmp_path / "run", engine, resume=True)
    assert found(resumed) == found(reference)
    assert round_events(tmp_path / "run") == [1, 2]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    engine = FailingEngine()
    engine.down = True
    with pytest.raises(RunStopped, match="zero-shot evaluation failed 2 times"):
        run(tmp_path / "run", engine)
    assert not (tmp_path / "run" / "checkpoint.json").exists()
    engine.down = False
    assert found(run(tmp_path / "run", engine, resume=True)) == found(run(tmp_path / "clean", ScriptedEngine()))
