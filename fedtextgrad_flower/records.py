"""Everything that crosses the wire between the ServerApp and a ClientApp, as Flower records.

Server -> client: the experiment (module, tasks, data split, seed, engines by name and the ordered
client ids) and, for a round, the global prompt, the LocalSettings and the client's ClientPolicy (leak
guard; attack, for simulated attackers). Client -> server: its ClientUpdate (prompts, step metrics and
its leak audit's numbers, never examples) and a report of what the round cost it.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from utils.client import ClientUpdate, LocalSettings
from utils.leakage import LeakGuard
from utils.outbound import ClientPolicy

# The flags a client needs to rebuild its own data shard and engines exactly as in-process.
EXPERIMENT_KEYS = ("module", "task", "data_dir", "split_sizes", "seed", "homo_split_num", "partition",
                   "dirichlet_alpha", "test_engine", "evaluation_engine", "judge", "cache_dir", "no_cache",
                   "max_concurrency")
_PATH_KEYS = ("data_dir", "cache_dir")


def experiment_record(args: argparse.Namespace, client_ids: list[str]) -> ConfigRecord:
    values: dict[str, Any] = {"client_ids": list(client_ids)}
    for key in EXPERIMENT_KEYS:
        value = getattr(args, key)
        if value is None:
            continue  # records hold no None: a missing key means "not set"
        if key in _PATH_KEYS:
            value = str(Path(value).expanduser().resolve())  # a client process may run elsewhere
        values[key] = list(value) if isinstance(value, tuple | list) else value
    return ConfigRecord(values)


def experiment_from_record(record: ConfigRecord) -> argparse.Namespace:
    values = dict(record)
    return argparse.Namespace(client_ids=list(values["client_ids"]),
                              **{key: values.get(key) for key in EXPERIMENT_KEYS})


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


def read_train_content(content: RecordDict) -> tuple[argparse.Namespace, str, str, int, LocalSettings]:
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


def update_from_reply(reply: Message | None, client_id: str, prompt: str, round_index: int,
                      timeout: float | None) -> tuple[ClientUpdate, dict[str, Any]]:
    """The client's update and report; a missing or error reply becomes a failed update."""
    if reply is None:
        waited = f"within {timeout:g} s" if timeout else "before the SuperLink gave up"
        return failed_update(client_id, round_index, prompt, f"no reply {waited}"), {}
    if reply.has_error():
        reason = short_reason(reply.error.reason or "")
        return failed_update(client_id, round_index, prompt, f"Flower error {reply.error.code}: {reason}"), {}
    fields = dict(reply.content["update"])
    steps, leakage = json.loads(fields.pop("steps_json")), json.loads(fields.pop("leakage_json"))
    update = ClientUpdate.from_record({**fields, "steps": steps, "leakage": leakage, "error": fields["error"] or None})
    if update.client_id != client_id:
        return failed_update(client_id, round_index, prompt,
                             f"the node answered as client {update.client_id!r}: check its node config"), {}
    return update, dict(reply.content["report"])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(reason: str, limit: int = 240) -> str:
    """One line out of Flower's error reason, which may hold a whole remote traceback."""
    text = _ANSI.sub("", reason)
    message = re.findall(r"Message: (.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = message[-1] if message else (lines[-1] if lines else "no reason given")
    return line.rstrip("'>").strip()[:limit]
