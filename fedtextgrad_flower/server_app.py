"""The ServerApp: the same round loop, aggregation, evaluation and run folder as the in-process modules.

The server loads only what it evaluates on (validation and test) and the list of client ids; the
clients' training happens on their nodes (client_app.py), reached through the grid.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from textgrad.errors import EngineError
from textgrad.serving.runtime import current_runtime
from utils.config import UsageError
from utils.federated.client import Engines, TrainRound
from utils.federated.experiment import Client, Experiment
from utils.federated.phases import RoundFailed
from utils.federated.runner import load_data, run_module
from utils.reporting.tracking import RunLog
from utils.run_config import RunConfig
from utils.tasks.data import DataError, TaskData
from utils.tasks.registry import TaskError

from .federation import FederationError, discover_clients, flower_train_round
from .records import experiment_record, update_limits
from .run_config import parse_run_config

app = ServerApp()


# Problems a user can fix; as in main.py they get one line naming the problem and the fix.
USER_ERRORS = (UsageError, TaskError, DataError, EngineError, FederationError, RoundFailed)


class RunFailed(RuntimeError):
    """A problem the user can fix ended the run. Flower marks the run failed and logs the exception that
    ended it, with the exception's traceback: this one has none to show (it is no bug), so the log holds the
    one line and nothing after it, and `flwr ls` shows the line as the run's status details."""

    @property  # type: ignore[override]
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, value: object) -> None:
        pass


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run_server(grid, context.run_config)
    except USER_ERRORS as exc:
        raise RunFailed("error: " + " ".join(str(exc).split()) + current_runtime().embedded.failure_note()) from None


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """One FedTextGrad run over the grid's SuperNodes; returns results.json's content."""
    args, flower = parse_run_config(run_config)
    module = importlib.import_module(args.module)

    def client_list(run_args: RunConfig, data: list[TaskData]) -> list[Client]:
        # The module's own clients, for their ids and order; their examples stay on the nodes.
        try:
            return [Client(c.client_id, c.task, []) for c in module.build_clients(run_args, data)]
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    client_ids = [c.client_id for c in client_list(args, load_data(args))]
    experiment = experiment_record(args, client_ids)
    nodes = discover_clients(grid, client_ids, experiment, flower.node_wait)

    def over_flower(exp: Experiment, engines: Engines, log: RunLog) -> TrainRound:
        limits = update_limits(engines.evaluation, exp.settings.max_steps, flower.max_update_tokens)
        return flower_train_round(grid, nodes, experiment, exp, log, flower.round_timeout, limits)

    return run_module(args, client_list, aggregate=args.module != "train_centralized", make_train_round=over_flower)
