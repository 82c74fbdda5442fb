"""What a researcher watches during a run: a progress bar per phase, warnings printed above the bars,
a repeating warning shown once (its count at the end), and the estimated time of the whole run (printed
after the zero-shot evaluation and round 1, and on the rounds bar: utils.reporting.eta).

Every phase (server start-up, zero-shot, each round's local steps, screening, merge and validation, the
final test) gets a bar of LLM calls done / expected (the expected calls are the run's plan's,
utils.federated.plan), with its cache hits, retries and ETA; the rounds bar
shows the last validation accuracy and the best so far. A phase's calls are counted by an engine meter
(textgrad.serving.stats.metered) in the threads that run it, so phases running side by side (the zero-shot
evaluation beside round 1's training) count their own calls. The seconds each phase took go to
results.json (`phase_seconds`).

Bars are drawn on stderr when it is a terminal; FEDTEXTGRAD_PROGRESS=1 forces them (e.g. under `tee`),
FEDTEXTGRAD_PROGRESS=0 turns them off. Warnings and notes always print.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from textgrad.serving.runtime import current_runtime
from textgrad.serving.stats import EngineStats, metered

T = TypeVar("T")
PROGRESS_ENV = "FEDTEXTGRAD_PROGRESS"
REFRESH_S = 0.5


def bars_enabled() -> bool:
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    return sys.stderr.isatty()


def note(message: str) -> None:
    """One line on stderr above the bars (estimates, resume notes)."""
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """A console handler that always writes to the current sys.stderr (which tests and tools replace)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Formatter(logging.Formatter):
    """"warning: message", on one line (server errors quoted in a message often carry line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {_one_line(super().format(record))}"


class RepeatedWarnings(logging.Filter):
    """Lets the first record of each message (by logger and template) through and counts the others;
    drops every record once the process is stopping (Ctrl-C): calls it broke are nobody's fault."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._first: dict[tuple[str, str], str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if current_runtime().stop.is_set():
            return False
        key = (record.name, str(record.msg))
        with self._lock:
            if key in self._counts:
                self._counts[key] += 1
                return False
            self._counts[key] = 0
            self._first[key] = _one_line(record.getMessage())
        return True

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._first.clear()

    def repeats(self) -> list[tuple[str, int]]:
        """(first message, times it was held back) of every warning that repeated."""
        with self._lock:
            return [(self._first[key], n) for key, n in self._counts.items() if n]


_handler: _StderrHandler | None = None
warnings_filter = RepeatedWarnings()


def configure_logging() -> None:
    """Once per process: warnings of every logger go to stderr as "warning: ...", each message once."""
    global _handler
    if _handler is not None:
        return
    _handler = _StderrHandler()
    _handler.setLevel(logging.WARNING)
    _handler.setFormatter(_Formatter("%(message)s"))
    _handler.addFilter(warnings_filter)
    logging.root.addHandler(_handler)


# ---------------------------------------------------------------------------------- phases


def _postfix(cache_hits: int, retries: int) -> str:
    return f"cache hits {cache_hits}, retries {retries}"


class Phase:
    """One phase of a run: its bar, the calls made inside it (from any thread that runs its work
    through `run`), and its seconds."""

    def __init__(self, console: RunConsole, key: str, desc: str, total: int | None, show: bool) -> None:
        self.console, self.key, self.desc = console, key, desc
        self.total = total
        self._meters: list[EngineStats] = []
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._closed = False
        self.bar: tqdm | None = None
        if show:
            fmt = "{desc}: {elapsed}{postfix}" if total is None else None
            self.bar = tqdm(total=total, desc=desc, unit="call", leave=False, dynamic_ncols=True,
                            file=sys.stderr, bar_format=fmt, mininterval=REFRESH_S, postfix=_postfix(0, 0))

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) with its LLM calls (also those of the threads it starts) counted in this phase."""
        with metered() as meter:
            with self._lock:
                self._meters.append(meter)
            return fn(*args, **kwargs)

    def counts(self) -> dict[str, int]:
        with self._lock:
            meters = list(self._meters)
        totals = dict.fromkeys(("calls", "cache_hits", "retries"), 0)
        for meter in meters:
            stats = meter.as_dict()
            for name in totals:
                totals[name] += stats[name]
        return totals

    def done(self) -> int:
        """Calls made: requests sent plus answers from the cache."""
        counts = self.counts()
        return counts["calls"] + counts["cache_hits"]

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total

    def refresh(self, final: bool = False) -> None:
        if self.bar is None or self._closed:
            return
        counts = self.counts()
        done = counts["calls"] + counts["cache_hits"]
        if self.total is not None and done > self.total:
            self.set_total(done)  # a retried phase replays its calls
        self.bar.set_postfix_str(_postfix(counts["cache_hits"], counts["retries"]), refresh=False)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)  # drawn only if mininterval has passed since the last draw
            if final:
                self.bar.refresh()
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.refresh(final=True)  # its final count, drawn once before the bar is cleared
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.console.add_seconds(self.key, time.monotonic() - self._started)
        self.console.forget(self)
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Phase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StepsPhase(Phase):
    """Local steps: calls done / expected. Expected starts at the most a step can make and follows the
    steps finished (a reverted step skips its re-score), counting the steps of clients running side by
    side as half done."""

    def __init__(self, console: RunConsole, key: str, desc: str, steps: int, most_calls: int,
                 clients: int, show: bool) -> None:
        super().__init__(console, key, f"{desc} 0/{steps}", most_calls, show)
        self.base_desc, self.steps, self.clients, self.steps_done = desc, steps, clients, 0
        self.most = most_calls

    def step_done(self) -> None:
        with self._lock:
            self.steps_done += 1
            steps_done = self.steps_done
        done = self.done()
        running = min(self.clients, self.steps - steps_done)
        pace = done / (steps_done + running / 2)
        self.set_total(done if running == 0 else max(done, min(self.most, round(pace * self.steps))))
        if self.bar is not None:
            self.bar.set_description_str(f"{self.base_desc} {steps_done}/{self.steps}", refresh=False)
        self.refresh()


class RunConsole:
    """The bars and messages of one run (one per process at a time)."""

    def __init__(self, show_bars: bool | None = None) -> None:
        self.show_bars = bars_enabled() if show_bars is None else show_bars
        self.seconds: dict[str, float] = {}
        self._phases: list[Phase] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.rounds_bar: tqdm | None = None

    # -- phases ------------------------------------------------------------------------------
    def phase(self, key: str, desc: str, total: int | None) -> Phase:
        """A phase of `total` LLM calls (None: a count-less bar of elapsed time; 0: no bar)."""
        return self._track(Phase(self, key, desc, total, self.show_bars and total != 0))

    def steps_phase(self, key: str, desc: str, steps: int, most_calls: int, clients: int) -> StepsPhase:
        """`steps` local steps of `clients` clients side by side, making at most `most_calls` LLM calls."""
        return self._track(StepsPhase(self, key, desc, steps, most_calls, clients, self.show_bars))

    def _track(self, phase: Any) -> Any:
        with self._lock:
            self._phases.append(phase)
        return phase

    def forget(self, phase: Phase) -> None:
        with self._lock:
            if phase in self._phases:
                self._phases.remove(phase)

    def add_seconds(self, key: str, seconds: float) -> None:
        with self._lock:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self._lock:
                phases = list(self._phases)
            for phase in phases:
                phase.refresh()

    # -- the rounds bar ----------------------------------------------------------------------
    def open_rounds(self, total: int, done: int) -> None:
        if self.show_bars and self.rounds_bar is None:
            self.rounds_bar = tqdm(total=total, initial=done, desc="rounds", unit="round", dynamic_ncols=True,
                                   file=sys.stderr, leave=False)

    def round_done(self, val: float, best: float, best_round: int) -> None:
        if self.rounds_bar is not None:
            self.rounds_bar.set_postfix_str(f"val {val:.3f}, best {best:.3f} (round {best_round})", refresh=False)
            self.rounds_bar.update(1)

    def time_left(self, left: str) -> None:
        """The run's estimated time still to go, after the last round's accuracies on the rounds bar."""
        if self.rounds_bar is not None:
            self.rounds_bar.set_postfix_str(f"{self.rounds_bar.postfix}, about {left} left")

    # -- the whole run -----------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[RunConsole]:
        """Bars refreshed twice a second, warnings printed above them, repeated ones counted."""
        configure_logging()
        warnings_filter.reset()
        if self.show_bars:
            self._ticker = threading.Thread(target=self._tick, name="fedtextgrad-progress", daemon=True)
            self._ticker.start()
        try:
            with logging_redirect_tqdm():
                yield self
        finally:
            self._stop.set()
            for phase in list(self._phases):
                phase.close()
            if self.rounds_bar is not None:
                self.rounds_bar.close()
            if not current_runtime().stop.is_set():
                for message, count in warnings_filter.repeats():
                    note(f"warning: {message} (and {count} more like it in this run)")


_current: RunConsole | None = None


def current() -> RunConsole:
    """The console of the run in progress, or a silent one (a caller without main.py: tests, Flower)."""
    return _current if _current is not None else RunConsole(show_bars=False)


@contextlib.contextmanager
def run_console() -> Iterator[RunConsole]:
    global _current
    console, previous = RunConsole(), _current
    _current = console
    try:
        with console.running():
            yield console
    finally:
        _current = previous


# ----------------------------------------------------------------------------------


def resume_note(run_name: str, done: int | None, rounds: int) -> str:
    """What --resume continues with: done is the round of the checkpoint, None if there is none."""
    if done is None:
        return f"resuming {run_name}: it stopped before its first checkpoint, so it starts over"
    if done >= rounds:
        return f"resuming {run_name}: all {rounds} rounds are done; only the final test is left"
    return f"resuming {run_name} from its checkpoint after round {done}: continuing with round {done + 1} of {rounds}"
