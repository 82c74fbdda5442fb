"""Who a SuperNode is and what data and engines it uses, from its node config.

Node config keys (`flower-supernode --node-config '...'`; the simulation sets the first two):
  partition-id     which client of the run this node is: in-process client number partition-id,
                   so it gets exactly that client's shard (same seed, same partition)
  num-partitions   set by the simulation; not needed otherwise
  task             train_hetero_fed only: this node's task, instead of the partition-id'th --task
  data-dir         this node's task files (default: the server's --data_dir)
  train-data       "shard" (default): the partition-id'th shard of the task's training split, as
                   in-process; "all": every training example of this node's data-dir (a node that
                   holds only its own private data)
  test-engine, evaluation-engine, cache-dir   this node's engines and response cache (default:
                   the server's flags); endpoints and keys come from this node's environment
                   (LOCAL_BASE_URL, VLLM_BASE_URL, OPENAI_API_KEY, ...), never from the server
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from utils.federated.experiment import Client
from utils.federated.runner import load_data
from utils.run_config import RunConfig
from utils.tasks.registry import resolve_task

from .records import FlowerExperiment

_ENGINE_OVERRIDES = {"data-dir": "data_dir", "test-engine": "test_engine", "evaluation-engine": "evaluation_engine",
                     "cache-dir": "cache_dir"}
HETERO = "train_hetero_fed"


class NodeConfigError(ValueError):
    """This node's config does not say which client it is, or how to find its data."""


def _partition_id(node_config: Mapping[str, Any], client_ids: list[str]) -> int:
    if "partition-id" not in node_config:
        raise NodeConfigError("the node config has no partition-id: start the SuperNode with "
                              "--node-config 'partition-id=N'")
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(client_ids):
        raise NodeConfigError(f"partition-id {pid} is not one of the {len(client_ids)} clients of this run "
                              f"(0..{len(client_ids) - 1})")
    return pid


def own_task(experiment: FlowerExperiment, node_config: Mapping[str, Any]) -> str:
    """train_hetero_fed: the task this node trains on."""
    if node_config.get("task"):
        return str(node_config["task"])
    return experiment.config.task[_partition_id(node_config, experiment.client_ids)]


def client_id_of(experiment: FlowerExperiment, node_config: Mapping[str, Any]) -> str:
    """The in-process client id this node stands for (client ids come from the server, in order)."""
    if experiment.config.module == HETERO:
        return resolve_task(own_task(experiment, node_config)).name
    return experiment.client_ids[_partition_id(node_config, experiment.client_ids)]


def node_args(experiment: FlowerExperiment, node_config: Mapping[str, Any]) -> RunConfig:
    """The experiment's flags with this node's own data dir, engines and cache."""
    own = {flag: str(node_config[key]) for key, flag in _ENGINE_OVERRIDES.items() if node_config.get(key)}
    if experiment.config.module == HETERO:
        own["task"] = [own_task(experiment, node_config)]  # load only this node's task
    return replace(experiment.config, **own)


def load_own_client(args: RunConfig, node_config: Mapping[str, Any], client_id: str) -> Client:
    """This node's client with its training examples, built by the module's own build_clients."""
    data = load_data(args)
    mode = str(node_config.get("train-data", "shard"))
    if mode == "all":
        return Client(client_id, data[0].task, data[0].train)
    if mode != "shard":
        raise NodeConfigError(f"train-data {mode!r} is not shard or all")
    module = importlib.import_module(args.module)
    clients = {c.client_id: c for c in module.build_clients(args, data)}
    if client_id not in clients:
        raise NodeConfigError(f"this node's data has no client {client_id!r} (it has {', '.join(clients)})")
    return clients[client_id]
