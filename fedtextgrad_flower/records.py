"""Everything that crosses the wire between the ServerApp and a ClientApp, as Flower records.

Server -> client: the experiment (module, tasks, data split, seed, engines by name and the ordered
client ids) and, for a round, the global prompt, the LocalSettings and the client's ClientPolicy (leak
guard; attack, for simulated attackers). Client -> server: its ClientUpdate (prompts, step metrics and
its leak audit's numbers, never examples) and a report of what the round cost it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from pydantic import TypeAdapter, ValidationError

from textgrad.engine import ChatEngine
from utils.config import default_run_config
from utils.federated.client import ClientUpdate, LocalSettings, StepResult
from utils.privacy.leakage import LeakAudit, LeakGuard
from utils.privacy.outbound import ClientPolicy
from utils.run_config import RunConfig

# The flags a client needs to rebuild its own data shard and engines exactly as in-process.
EXPERIMENT_KEYS = ("module", "task", "data_dir", "split_sizes", "seed", "homo_split_num", "partition",
                   "dirichlet_alpha", "test_engine", "evaluation_engine", "judge", "cache_dir", "no_cache",
                   "max_concurrency", "temperature", "top_p")
_PATH_KEYS = ("data_dir", "cache_dir")


@dataclass(frozen=True)
class FlowerExperiment:
    """A client's view of the server's run: the ordered client ids, and a RunConfig holding the server's
    EXPERIMENT_KEYS values over the parser's defaults (no other flag crosses the wire)."""

    config: RunConfig
    client_ids: list[str]


def experiment_record(args: RunConfig, client_ids: list[str]) -> ConfigRecord:
    values: dict[str, Any] = {"client_ids": list(client_ids)}
    for key in EXPERIMENT_KEYS:
        value = getattr(args, key)
        if value is None:
            continue  # records hold no None: a missing key means "not set"
        if key in _PATH_KEYS:
            value = str(Path(value).expanduser().resolve())  # a client process may run elsewhere
        values[key] = list(value) if isinstance(value, tuple | list) else value
    return ConfigRecord(values)


def experiment_from_record(record: ConfigRecord) -> FlowerExperiment:
    values = dict(record)
    # A key the record lacks was None on the server, which is also its default here.
    sent = {key: values[key] for key in EXPERIMENT_KEYS if key in values}
    for key in ("task", "temperature", "top_p"):  # lists as the parser makes them
        if key in sent:
            sent[key] = list(sent[key])
    if "split_sizes" in sent:  # a list on the wire, a tuple as the parser makes it
        sent["split_sizes"] = tuple(sent["split_sizes"])
    return FlowerExperiment(replace(default_run_config(), **sent), list(values["client_ids"]))


def train_content(experiment: ConfigRecord, client_id: str, prompt: str, round_index: int,
                  settings: LocalSettings, policy: ClientPolicy) -> RecordDict:
    return RecordDict({
        "experiment": experiment,
        "round": ConfigRecord({"client_id": client_id, "round": round_index, "global_prompt": prompt}),
        "settings": ConfigRecord(asdict(settings)),
        "policy": ConfigRecord({"leak_guard": policy.guard.mode, "leak_min_words": policy.guard.min_words,
                                "attack": policy.attack or "", "seed": policy.seed}),
    })


def read_policy(content: RecordDict) -> ClientPolicy:
    record = content["policy"]
    return ClientPolicy(LeakGuard(str(record["leak_guard"]), int(record["leak_min_words"])),
                        str(record["attack"]) or None, int(record["seed"]))


def read_train_content(content: RecordDict) -> tuple[FlowerExperiment, str, str, int, LocalSettings]:
    """(experiment, client id, global prompt, round, settings) of a train message."""
    round_record = content["round"]
    return (experiment_from_record(content["experiment"]), str(round_record["client_id"]),
            str(round_record["global_prompt"]), int(round_record["round"]),
            LocalSettings(**dict(content["settings"])))


def update_content(update: ClientUpdate, report: dict[str, int | float]) -> RecordDict:
    record = update.to_record()
    steps, leakage = record.pop("steps"), record.pop("leakage")
    # Step results hold None values, which records cannot carry; JSON keeps them exact.
    fields = {**record, "error": record["error"] or "", "steps_json": json.dumps(steps),
              "leakage_json": json.dumps(leakage)}
    return RecordDict({"update": ConfigRecord(fields), "report": MetricRecord(report)})


def failed_update(client_id: str, round_index: int, prompt: str, error: str) -> ClientUpdate:
    return ClientUpdate(client_id, round_index, prompt, prompt, error=error)


# ---------------------------------------------------------------- what the server accepts from a client

# The default cap on each text of an update, in context windows of the evaluation engine: a real
# prompt fits one window (the optimizer rewrote it within one), so four leave ample room.
UPDATE_WINDOWS = 4
# No tokenizer packs ordinary text this densely, so a longer text is refused without counting it.
MAX_CHARS_PER_TOKEN = 64
# A step's record is about 150 characters of JSON.
MAX_STEP_JSON_CHARS = 1000
MAX_REPORT_ENTRIES = 64
_WIRE_TYPES = {"client_id": str, "round": int, "start_prompt": str, "prompt": str, "error": str,
               "steps_json": str, "leakage_json": str}
_TEXTS = ("prompt", "start_prompt", "error")
_STEPS = TypeAdapter(list[StepResult])
# Keys of the flower_client event that a report must not overwrite.
_EVENT_KEYS = {"type", "round", "client", "node"}


@dataclass(frozen=True)
class UpdateLimits:
    """A client update holds at most max_steps steps and texts of at most max_tokens tokens each."""

    max_tokens: int
    max_steps: int
    count_tokens: Callable[[str], int]


def update_limits(evaluation: ChatEngine, max_steps: int, max_tokens: int = 0) -> UpdateLimits:
    """max_tokens 0: UPDATE_WINDOWS times the evaluation engine's window, counted by its tokenizer."""
    return UpdateLimits(max_tokens or UPDATE_WINDOWS * evaluation.context_window, max_steps,
                        evaluation.count_tokens)


class RefusedUpdate(ValueError):
    """A client reply the server does not accept: its message says why."""


def update_from_reply(reply: Message | None, client_id: str, prompt: str, round_index: int,
                      timeout: float | None, limits: UpdateLimits | None = None
                      ) -> tuple[ClientUpdate, dict[str, Any]]:
    """The client's update and report; a missing, error, malformed or oversized reply becomes a failed
    update saying why (limits None: no size limit)."""
    def failed(reason: str) -> tuple[ClientUpdate, dict[str, Any]]:
        return failed_update(client_id, round_index, prompt, reason), {}

    if reply is None:
        return failed(f"no reply {f'within {timeout:g} s' if timeout else 'before the SuperLink gave up'}")
    if reply.has_error():
        return failed(f"Flower error {reply.error.code}: {short_reason(reply.error.reason or '')}")
    try:
        update, report = _read_reply(reply.content, limits.max_steps if limits else None)
        if update.client_id != client_id:
            return failed(f"the node answered as client {update.client_id!r}: check its node config")
        if update.round != round_index:
            raise RefusedUpdate(f"it is for round {update.round}, not round {round_index}")
        if limits:
            _check_size(update, limits)
    except RefusedUpdate as exc:
        return failed(f"refused update: {exc}")
    return update, report


def _read_reply(content: RecordDict, max_steps: int | None) -> tuple[ClientUpdate, dict[str, Any]]:
    """The update and report of a reply of the right shape; RefusedUpdate says what is wrong otherwise."""
    record, report = content.get("update"), content.get("report")
    if not isinstance(record, ConfigRecord) or not isinstance(report, MetricRecord):
        raise RefusedUpdate("the reply lacks its 'update' config record or its 'report' metric record")
    for key, kind in _WIRE_TYPES.items():
        value = record.get(key)
        if type(value) is not kind:  # exactly: bytes are no text, and True is no round number
            found = type(value).__name__ if key in record else "missing"
            raise RefusedUpdate(f"field {key!r} is {found}, not {'text' if kind is str else 'a whole number'}")
    steps_json = record["steps_json"]
    if max_steps is not None and len(steps_json) > MAX_STEP_JSON_CHARS * max(max_steps, 1):
        raise RefusedUpdate(f"its steps take {len(steps_json)} characters, too many for {max_steps} steps")
    try:
        steps = _STEPS.validate_json(steps_json, strict=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise RefusedUpdate(f"its steps are malformed ({where + ': ' if where else ''}{error['msg']})") from None
    if max_steps is not None and len(steps) > max_steps:
        raise RefusedUpdate(f"it holds {len(steps)} steps, more than the round's {max_steps}")
    if any(not 0 <= a <= 1 for s in steps for a in (s.batch_accuracy, s.new_batch_accuracy) if a is not None):
        raise RefusedUpdate("a step's accuracy is not between 0 and 1")
    if (len(report) > MAX_REPORT_ENTRIES or _EVENT_KEYS & set(report)
            or any(type(value) not in (int, float) for value in report.values())):
        raise RefusedUpdate(f"its report is not up to {MAX_REPORT_ENTRIES} named numbers")
    try:
        audit = json.loads(record["leakage_json"])
        leakage = LeakAudit(**audit) if audit else None
    except (ValueError, TypeError):
        raise RefusedUpdate("its leakage audit is malformed") from None
    update = ClientUpdate(record["client_id"], record["round"], record["start_prompt"], record["prompt"],
                          steps, record["error"] or None, leakage)
    return update, dict(report)


def _check_size(update: ClientUpdate, limits: UpdateLimits) -> None:
    for name in _TEXTS:
        text = getattr(update, name) or ""
        if len(text.encode("utf-8")) <= limits.max_tokens:
            continue  # no counting needed: every token covers at least one byte
        if len(text) > MAX_CHARS_PER_TOKEN * limits.max_tokens:
            raise RefusedUpdate(f"its {name} has {len(text)} characters, far over max_update_tokens "
                                f"{limits.max_tokens}")
        tokens = limits.count_tokens(text)
        if tokens > limits.max_tokens:
            raise RefusedUpdate(f"its {name} has {tokens} tokens, more than max_update_tokens {limits.max_tokens}")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(reason: str, limit: int = 240) -> str:
    """One line out of Flower's error reason, which may hold a whole remote traceback."""
    text = _ANSI.sub("", reason)
    message = re.findall(r"Message: (.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = message[-1] if message else (lines[-1] if lines else "no reason given")
    return line.rstrip("'>").strip()[:limit]
