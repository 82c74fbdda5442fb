"""TextGrad baseline: one client holding all training data, no aggregation; a round is an epoch."""

from __future__ import annotations

from typing import Any

from utils.federated.experiment import Client
from utils.federated.runner import run_module
from utils.run_config import RunConfig
from utils.tasks.data import TaskData


def build_clients(args: RunConfig, data: list[TaskData]) -> list[Client]:
    return [Client("central", data[0].task, data[0].train)]


def main(args: RunConfig) -> dict[str, Any]:
    return run_module(args, build_clients, aggregate=False)
