"""Reading checkpoint.json back for --resume: checked whole before anything in it is trusted or anything in the
run folder changes.

A checkpoint is the round loop's state (utils.federated.run_state.RunState) plus the run log's own keys
(events_size, comet_experiment_key). It is checked for its schema and types (read from RunState's own type
hints, so the check follows the format), its ranges (accuracies in 0..1, counters and seconds finite and not
negative) and its consistency: with itself (one history entry per round, the global and best prompts being
the rounds' aggregates), with the run's settings (no round past --max_epochs, the run's tasks) and with the
files beside it (events.jsonl at least as long as the checkpoint says). A damaged checkpoint is one line
naming the file and what to do (a UsageError: exit code 2), and the folder is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.config import UsageError
from utils.reporting.tracking import CHECKPOINT

from .run_state import RunState, Scores


class CheckpointError(ValueError):
    """What is wrong with a checkpoint, in a few words."""


class PastTheLastRound(CheckpointError):
    """A sound checkpoint of more rounds than this run has (it was resumed with a lower --max_epochs)."""


@dataclass(frozen=True)
class Checkpoint:
    state: RunState
    events_size: int  # events.jsonl's length when it was written: the run log cuts it back to this


def read_checkpoint(run_dir: Path, rounds: int, tasks: list[str]) -> Checkpoint | None:
    """The checkpoint of the run in run_dir (None: it stopped before its first one), checked against a run of
    `rounds` rounds on `tasks`. Reads only; UsageError naming the file and the fix when it is damaged."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        problem = f"unreadable: {exc.strerror}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except (ValueError, RecursionError):
        problem = "not valid JSON: cut short or overwritten"
    else:
        try:
            return _check(data, rounds, tasks, _size(run_dir / "events.jsonl"))
        except PastTheLastRound as exc:
            raise UsageError(f"{path} {exc}") from None
        except CheckpointError as exc:
            problem = str(exc)
    raise UsageError(f"{path} is damaged ({problem}); it was left as it is: restore it from a copy, or start the "
                     "run again under a new --run_name") from None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _check(data: Any, rounds: int, tasks: list[str], events_on_disk: int) -> Checkpoint:
    if not isinstance(data, dict):
        raise CheckpointError(f"it holds {_show(data)}, not a JSON object")
    _conforms(data, RunState, "the checkpoint")
    events_size, comet_key = data.get("events_size"), data.get("comet_experiment_key")
    if not isinstance(events_size, int) or isinstance(events_size, bool):
        raise CheckpointError(f"events_size is {_show(events_size)}, not a whole number")
    if comet_key is not None and not isinstance(comet_key, str):
        raise CheckpointError(f"comet_experiment_key is {_show(comet_key)}")
    state = RunState.from_dict(data)
    _check_state(state, tasks)
    if not 0 <= events_size <= events_on_disk:
        raise CheckpointError(f"events_size {events_size} does not fit events.jsonl's {events_on_disk} bytes")
    if state.round > rounds:
        raise PastTheLastRound(f"is after round {state.round}, past this run's {rounds} rounds: resume with "
                               f"--rounds {state.round} or more")
    return Checkpoint(state, events_size)


def _check_state(state: RunState, tasks: list[str]) -> None:
    """Ranges, and the state's agreement with itself and with the run's tasks."""
    if state.round < 0:
        raise CheckpointError(f"round is {state.round}")
    if [r.round for r in state.history] != list(range(1, state.round + 1)):
        raise CheckpointError(f"round is {state.round} but its history holds rounds "
                              f"{[r.round for r in state.history]}")
    aggregates = [state.starting_prompt] + [r.aggregate for r in state.history]
    if state.global_prompt != aggregates[-1]:
        raise CheckpointError("global_prompt is not the last round's aggregate")
    if not 0 <= state.best.round <= state.round or state.best.prompt != aggregates[state.best.round]:
        raise CheckpointError(f"best names round {state.best.round}, whose prompt it does not hold")
    if set(state.zero_shot) != {"val", "test"}:
        raise CheckpointError(f"zero_shot holds {sorted(state.zero_shot)}, not val and test")
    scores: dict[str, Scores | None] = {f"zero_shot.{k}": v for k, v in state.zero_shot.items()}
    scores["evaluation_engine_zero_shot_test"] = state.evaluation_engine_zero_shot_test
    scores |= {f"history[{i}].val": r.val for i, r in enumerate(state.history)}
    for where, accuracies in scores.items():
        if accuracies is not None:
            _check_accuracies(accuracies, tasks, where)
    _check_fraction(state.best.val, "best.val")
    counts = {**{f"llm.{k}": v for k, v in state.llm.items()}, "eval_judge_failures": state.eval_judge_failures,
              **{f"history[{i}].llm.{k}": v for i, r in enumerate(state.history) for k, v in r.llm.items()}}
    seconds = {"wall_seconds": state.wall_seconds, **{f"phase_seconds.{k}": v for k, v in state.phase_seconds.items()}}
    for where, value in {**counts, **seconds}.items():
        if not (math.isfinite(value) and value >= 0):
            raise CheckpointError(f"{where} is {_show(value)}")


def _check_accuracies(accuracies: Scores, tasks: list[str], where: str) -> None:
    if set(accuracies) != {*tasks, "mean"}:
        raise CheckpointError(f"{where} scores {sorted(accuracies)}, not this run's tasks {sorted(tasks)}")
    for task, value in accuracies.items():
        _check_fraction(value, f"{where}.{task}")


def _check_fraction(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise CheckpointError(f"{where} is {_show(value)}, not an accuracy from 0 to 1")


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _conforms(value: Any, hint: Any, where: str) -> None:
    """value is what the type hint says, as JSON holds it (a dataclass as an object with its required keys)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _conforms(value, option, where)
            except CheckpointError:
                continue
        raise CheckpointError(f"{where} is {_show(value)}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where} is {_show(value)}, not an object")
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name in value:
                _conforms(value[f.name], hints[f.name], f"{where}.{f.name}" if where != "the checkpoint" else f.name)
            elif required:
                raise CheckpointError(f"{f.name} is missing" + ("" if where == "the checkpoint" else f" in {where}"))
        return
    if origin is list:
        if not isinstance(value, list):
            raise CheckpointError(f"{where} is {_show(value)}, not a list")
        for i, item in enumerate(value):
            _conforms(item, args[0], f"{where}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise CheckpointError(f"{where} is {_show(value)}, not an object")
        for key, item in value.items():
            _conforms(item, args[1], f"{where}.{key}")
        return
    expected = {int: (int,), float: (int, float), str: (str,), bool: (bool,), type(None): (type(None),)}[hint]
    if not isinstance(value, expected) or (isinstance(value, bool) and hint is not bool):
        noun = {int: "a whole number", float: "a number", str: "text", bool: "true or false",
                type(None): "null"}[hint]
        raise CheckpointError(f"{where} is {_show(value)}, not {noun}")
