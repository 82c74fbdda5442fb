"""The Flower run config ([tool.flwr.app.config], `flwr run --run-config`) as main.py's flags.

Keys are main.py flag names (module, task, max_epochs, ...), checked by the same parser and
validation as the command line. Flower values are scalars, so `task` lists tasks separated by
spaces or commas, and an empty string means "not set". Three keys only exist here:
  round_timeout      seconds the server waits for a round's replies; a client that has not answered
                     by then is recorded as failed (0: wait for every client)
  node_wait          seconds the server waits for the SuperNodes of all clients to connect
  max_update_tokens  the largest text (prompt, error) a client update may hold, in tokens of the
                     evaluation engine; a larger update is refused (0: 4 x that engine's context window)

Whoever submits a run writes its run config, so its paths are the operator's to allow: output_dir,
comet_log_path, cache_dir and data_dir must lie inside one of the folders listed in the ServerApp
process's FEDTEXTGRAD_ALLOWED_DIRS (separated by ':'), by default its working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from utils.config import UsageError, build_parser, mapping_to_argv, parse_args
from utils.run_config import RunConfig

SOURCE = "the Flower run config"
ALLOWED_DIRS_VARIABLE = "FEDTEXTGRAD_ALLOWED_DIRS"
PATH_KEYS = ("output_dir", "comet_log_path", "cache_dir", "data_dir")


@dataclass(frozen=True)
class FlowerSettings:
    round_timeout: float = 0.0
    node_wait: float = 120.0
    max_update_tokens: int = 0


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerSettings]:
    values = {key: value for key, value in run_config.items() if value != ""}
    flower = {field.name: _setting(field.name, values.pop(field.name))
              for field in fields(FlowerSettings) if field.name in values}
    if isinstance(values.get("task"), str):
        values["task"] = values["task"].replace(",", " ").split()
    check_allowed_paths(values)  # before a path is read (a resumed run's config.yaml) or written
    args = parse_args(mapping_to_argv(build_parser(), values, SOURCE))
    check_allowed_paths(asdict(args))  # the defaults, and paths a resumed run's saved config brought
    return args, FlowerSettings(**flower)


# As utils.flag_values.LIMITS: past these a value is a typo, not a plan.
MAX_WAIT_S = 7 * 86_400.0
MAX_UPDATE_TOKENS = 1_000_000_000


def _setting(key: str, value: Any) -> float | int:
    if key == "max_update_tokens":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UPDATE_TOKENS:
            return value
        raise UsageError(f"{key} in {SOURCE} must be a whole number of tokens from 0 to {MAX_UPDATE_TOKENS}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 <= seconds <= MAX_WAIT_S:  # NaN and infinity fail too
        raise UsageError(f"{key} in {SOURCE} must be a number of seconds from 0 to {MAX_WAIT_S:g} (a week)")
    return seconds


def allowed_dirs() -> list[Path]:
    """The folders the operator lets run configs use: FEDTEXTGRAD_ALLOWED_DIRS, else the working directory."""
    listed = [part for part in os.environ.get(ALLOWED_DIRS_VARIABLE, "").split(os.pathsep) if part.strip()]
    return [Path(part).expanduser().resolve() for part in listed] or [Path.cwd().resolve()]


def check_allowed_paths(values: Mapping[str, Any]) -> None:
    """Every path of the run config lies inside an allowed folder (links followed, '..' resolved)."""
    allowed = allowed_dirs()
    for key in PATH_KEYS:
        value = values.get(key)
        if value is None or value == "":
            continue
        path = Path(str(value)).expanduser().resolve()
        if not any(path.is_relative_to(folder) for folder in allowed):
            raise UsageError(f"{key} {value} in {SOURCE} is outside the folders this server allows "
                             f"({', '.join(map(str, allowed))}): use a path inside them, or have the operator "
                             f"add its folder to {ALLOWED_DIRS_VARIABLE} before starting the SuperLink")


def main(argv: list[str] | None = None) -> int:
    """python -m fedtextgrad_flower.run_config [--run-config "k=v ..."]: the run config `flwr run .` would send
    from this folder (pyproject.toml's, with the overrides), checked as the ServerApp checks it. Exit code 2
    and one line if it is bad: scripts/flower_simulation.sh asks before it starts anything."""
    import argparse
    import sys

    import click
    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    parser = argparse.ArgumentParser(prog="python -m fedtextgrad_flower.run_config")
    parser.add_argument("--run-config", action="append", default=None)
    try:
        overrides = parse_config_args(parser.parse_args(argv).run_config)
        parse_run_config(get_fused_config_from_dir(Path.cwd(), overrides))
    except (UsageError, ValueError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        print("error: " + " ".join(message.split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
