"""FedTextGrad command line: python main.py --module {train_centralized,train_homo_fed,train_hetero_fed} ..."""

from __future__ import annotations

import importlib
import sys

from textgrad.engine import EngineError
from utils.config import UsageError, parse_args
from utils.data import DataError
from utils.rounds import RoundFailed
from utils.tasks import TaskError


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        importlib.import_module(args.module).main(args)
    except (UsageError, TaskError, DataError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RoundFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: continue later with --resume --run_name <the run's name>", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
