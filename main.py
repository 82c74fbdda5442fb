"""FedTextGrad command line: python main.py --module {train_centralized,train_homo_fed,train_hetero_fed} ...

Exit codes: 0 done; 2 bad input or an unreachable LLM endpoint at start (nothing was written);
1 the run stopped mid-way (the endpoint kept failing a round after its retries, or every client failed)
and can continue with --resume; 130 interrupted (Ctrl-C), also resumable.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from utils.config import UsageError, parse_args
from utils.data import DataError
from utils.tasks import TaskError


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        return _fail(exc, 2)
    return run(args)


def run(args: argparse.Namespace) -> int:
    # Imported only once the flags are known good: the LLM client libraries take a second or more to load,
    # and a typo deserves an instant answer.
    from textgrad.errors import EngineError
    from textgrad.local_server import failure_note
    from utils.rounds import RoundFailed

    # On a failure the embedded server's log stays in the temp folder and the error line names it;
    # otherwise it is removed when the server stops at exit.
    try:
        importlib.import_module(args.module).main(args)
    except (UsageError, TaskError, DataError, EngineError) as exc:
        # EngineError reaches here only from the start-up checks: the round loop turns one mid-run into
        # RunStopped (a RoundFailed).
        return _fail(exc, 2, failure_note())
    except RoundFailed as exc:
        return _fail(exc, 1, failure_note())
    except KeyboardInterrupt:
        hint = f": continue with python main.py --resume --run_name {args.run_name} --output_dir {args.output_dir}"
        print("\ninterrupted" + (hint if args.run_name else ""), file=sys.stderr)
        return 130
    except Exception:  # a bug: its traceback follows
        print("error: unexpected failure" + failure_note(), file=sys.stderr)
        raise
    return 0


def _fail(exc: BaseException, code: int, note: str = "") -> int:
    print("error: " + " ".join(str(exc).split()) + note, file=sys.stderr)  # always one line
    return code


if __name__ == "__main__":
    sys.exit(main())
