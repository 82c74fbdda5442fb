"""Homogeneous FedTextGrad: one task's training data split across --homo_split_num clients."""

from __future__ import annotations

from typing import Any

from utils.federated.experiment import Client
from utils.federated.partition import dirichlet_partition, iid_partition
from utils.federated.runner import run_module
from utils.run_config import RunConfig
from utils.tasks.data import TaskData


def build_clients(args: RunConfig, data: list[TaskData]) -> list[Client]:
    task_data = data[0]
    if args.partition == "dirichlet":
        shards = dirichlet_partition(task_data.train, args.homo_split_num, args.dirichlet_alpha, args.seed)
    else:
        shards = iid_partition(task_data.train, args.homo_split_num, args.seed)
    return [Client(f"client{i}", task_data.task, shard) for i, shard in enumerate(shards)]


def main(args: RunConfig) -> dict[str, Any]:
    return run_module(args, build_clients, aggregate=True)
