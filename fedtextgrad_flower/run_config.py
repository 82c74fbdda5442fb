"""The Flower run config ([tool.flwr.app.config], `flwr run --run-config`) as main.py's flags.

Keys are main.py flag names (module, task, max_epochs, ...), checked by the same parser and
validation as the command line. Flower values are scalars, so `task` lists tasks separated by
spaces or commas, and an empty string means "not set". Two keys only exist here:
  round_timeout  seconds the server waits for a round's replies; a client that has not answered
                 by then is recorded as failed (0: wait for every client)
  node_wait      seconds the server waits for the SuperNodes of all clients to connect
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.config import UsageError, build_parser, mapping_to_argv, parse_args

SOURCE = "the Flower run config"


@dataclass(frozen=True)
class FlowerSettings:
    round_timeout: float = 0.0
    node_wait: float = 120.0


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[argparse.Namespace, FlowerSettings]:
    values = {key: value for key, value in run_config.items() if value != ""}
    flower = {}
    for key in FlowerSettings.__dataclass_fields__:
        if key in values:
            try:
                flower[key] = float(values.pop(key))
            except (TypeError, ValueError):
                flower[key] = -1.0
            if not flower[key] >= 0:
                raise UsageError(f"{key} in {SOURCE} must be a number of seconds, 0 or more")
    if isinstance(values.get("task"), str):
        values["task"] = values["task"].replace(",", " ").split()
    args = parse_args(mapping_to_argv(build_parser(), values, SOURCE))
    return args, FlowerSettings(**flower)
