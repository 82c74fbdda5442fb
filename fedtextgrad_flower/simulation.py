"""Flower's simulation engine driven from Python (tests and bench/): the ServerApp gets its run
config here, since run_simulation, unlike `flwr run`, passes none. Users run `flwr run .`."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from utils.config import num_clients

from . import client_app
from .run_config import parse_run_config
from .server_app import run_server

# One Ray worker per core: on 2 cores, two simulated SuperNodes train at a time.
BACKEND = {"client_resources": {"num_cpus": 1}}


def simulate(run_config: Mapping[str, Any], clients: ClientApp = client_app.app,
             grid_wrapper: Callable[[Grid], Grid] | None = None, num_supernodes: int | None = None) -> None:
    """One run with a simulated SuperNode per client (partition-id = client number)."""
    args, _ = parse_run_config(run_config)
    server = ServerApp()

    @server.main()
    def _(grid: Grid, context: Context) -> None:
        run_server(grid_wrapper(grid) if grid_wrapper else grid, run_config)

    # Ray keeps its session folder after it stops: it goes in a folder of ours, removed after the run (in /tmp
    # whatever TMPDIR says: Ray's socket paths in it must stay under 108 characters).
    with tempfile.TemporaryDirectory(prefix="ftg-ray-", dir="/tmp", ignore_cleanup_errors=True) as ray_dir:
        run_simulation(server_app=server, client_app=clients, num_supernodes=num_supernodes or num_clients(args),
                       backend_config={**BACKEND, "init_args": {"_temp_dir": ray_dir}})
