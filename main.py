"""FedTextGrad command line: python main.py --module {train_centralized,train_homo_fed,train_hetero_fed} ...

Exit codes: 0 done; 2 bad input or an unreachable LLM endpoint at start (nothing was written);
1 the run stopped mid-way (the endpoint kept failing a round after its retries, every client failed, or
a file could not be written) and can continue with --resume; 128 + the signal's number when stopped by
one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), also resumable.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
from pathlib import Path

from utils.config import UsageError, parse_args
from utils.run_config import RunConfig
from utils.tasks.data import DataError
from utils.tasks.registry import TaskError


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        return run(args)
    except UsageError as exc:
        return _fail(exc, 2)
    except KeyboardInterrupt:  # before the run started (imports): nothing to resume
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 130


def run(args: RunConfig) -> int:
    # Imported only once the flags are known good: the LLM client libraries take a second or more to load,
    # and a typo deserves an instant answer.
    from textgrad.errors import EngineError
    from textgrad.serving.interrupt import StopSignals
    from textgrad.serving.runtime import current_runtime
    from utils.federated.phases import RoundFailed
    from utils.federated.runner import with_run_name

    # Named before the handler is installed: the resume line after a stop has to name the run the
    # module goes on to create, generated name included.
    args = with_run_name(args)
    runtime = current_runtime()
    signals = StopSignals(runtime.stop, lambda: _interrupted_line(args))
    signals.install()
    failure_note = runtime.embedded.failure_note
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
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP
        runtime.stop.request()
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print("\n" + _interrupted_line(args), file=sys.stderr, flush=True)
        return signals.exit_code
    except Exception:  # a bug: its traceback follows
        print("error: unexpected failure" + failure_note(), file=sys.stderr)
        raise
    return 0


def _interrupted_line(args: RunConfig) -> str:
    """The last line after a stop (Ctrl-C, SIGTERM, SIGHUP): how to continue the (named) run."""
    from utils.federated.phases import resume_command

    return f"interrupted: continue with {resume_command(Path(args.output_dir) / str(args.run_name))}"


def _fail(exc: BaseException, code: int, note: str = "") -> int:
    print("error: " + " ".join(str(exc).split()) + note, file=sys.stderr)  # always one line
    return code


def _exit(code: int) -> None:
    if code > 128:
        # Stopped by a signal: calls still in flight to a remote server are not waited for (they retry no more, see
        # textgrad.serving.interrupt), so the process ends now, with the resume hint as its last line. The
        # embedded server was already stopped by the signal; every file is written atomically or line by line.
        runtime = sys.modules.get("textgrad.serving.runtime")
        if runtime is not None:
            runtime.stop_default_embedded()  # atexit does not run after os._exit
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    # The process is ending: the interpreter's last garbage collections would walk every object of the
    # run, about a tenth of a second after its last reply. Frozen, they skip them; exit handlers still run.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
