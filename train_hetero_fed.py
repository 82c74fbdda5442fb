"""Heterogeneous FedTextGrad: one client per task; the merged prompt has to serve every task."""

from __future__ import annotations

from typing import Any

from utils.federated.experiment import Client
from utils.federated.runner import run_module
from utils.run_config import RunConfig
from utils.tasks.data import TaskData


def build_clients(args: RunConfig, data: list[TaskData]) -> list[Client]:
    return [Client(d.task.name, d.task, d.train) for d in data]


def main(args: RunConfig) -> dict[str, Any]:
    return run_module(args, build_clients, aggregate=True)
