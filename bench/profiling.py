"""CPU profiles of every thread of a run: cProfile, timed by each thread's own CPU clock.

cProfile alone sees the thread that enabled it, and by wall time, so a run that waits on sockets in a
dozen threads shows little but waiting. Here each thread started inside the block gets its own profiler
on time.thread_time, and their stats are added up: what the framework spends CPU on, in any thread.

    python -m bench.profiling OUT.prof main.py --module train_homo_fed ...   # a whole process
    with threads_profiled("out.prof"): ...                                    # a block of a process
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import runpy
import sys
import threading
import time
from collections.abc import Iterator


@contextlib.contextmanager
def threads_profiled(path: str) -> Iterator[None]:
    """Profile this thread and every thread started inside the block by CPU time; stats written to path."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_new_thread(*_: object) -> None:  # the first profiling event of a thread started inside
        profile = cProfile.Profile(timer=time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook in the thread

    own = cProfile.Profile(timer=time.thread_time)
    threading.setprofile(start_in_new_thread)
    own.enable()
    try:
        yield
    finally:
        own.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        with lock:
            stats = pstats.Stats(own)
            for profile in profiles:
                stats.add(profile)
        stats.dump_stats(path)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.profiling OUT.prof SCRIPT.py [ARGS...]")
    path, script = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    code: int | str | None = 0
    with threads_profiled(path):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:  # the script's own exit: the profile is written first
            code = exc.code
    sys.exit(code)


if __name__ == "__main__":
    main()
