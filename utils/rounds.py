"""The server side: the round loop shared by all three training modules.

A round: send the global prompt to the chosen clients -> each runs its local steps -> merge the
returned prompts -> validate the merge -> keep the best so far -> the merge is the next global prompt.
What a run is: utils.experiment; what the loop records: utils.round_record; its state: utils.run_state.
"""

from __future__ import annotations

import contextvars
import functools
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

from textgrad.errors import EngineError
from textgrad.parallel import run_concurrently
from textgrad.serving.runtime import current_runtime
from textgrad.serving.slots import background
from textgrad.serving.stats import EngineStats, metered

from . import progress
from .client import ClientUpdate, Engines, LocalSettings, train_client
from .experiment import Client, Evaluator, Experiment, eval_calls, starting_prompt, step_calls
from .outbound import OutboundPlan, release_update
from .round_record import RoundFailed, record_round, write_results, zero_shot_state
from .run_state import RoundSummary, RunState, add_counts, add_seconds
from .tracking import RunLog

# (client ids, global prompt, round) -> one update per client id, in the same order. In-process
# simulation and Flower each provide one.
TrainRound = Callable[[list[str], str, int], list[ClientUpdate]]


T = TypeVar("T")
# The engine already retried each call (about 15 s for a refused connection); one more try of the whole
# phase after this pause rides out a server restart, its finished calls coming from the cache. An
# endpoint that still answers (a call ran out of retries at a high error rate) gets up to PHASE_TRIES.
PHASE_RETRY_WAIT_S = 5.0
PHASE_TRIES = 3


class RunStopped(RoundFailed):
    """The LLM endpoint failed a phase twice mid-run; the run stopped at its last checkpoint, resumable."""


def select_clients(client_ids: list[str], per_round: int, seed: int, round_index: int) -> list[str]:
    """A seeded choice per round, returned in client order (the order aggregation sees)."""
    if per_round >= len(client_ids):
        return list(client_ids)
    chosen = set(random.Random(f"{seed}:select:{round_index}").sample(client_ids, per_round))
    return [c for c in client_ids if c in chosen]


def train_in_process(clients: list[Client], engines: Engines, settings: LocalSettings,
                     on_step: Callable[[], None] | None = None, outbound: OutboundPlan | None = None) -> TrainRound:
    by_id = {c.client_id: c for c in clients}
    outbound = outbound or OutboundPlan()

    def train_one(client: Client, prompt: str, round_index: int) -> ClientUpdate:
        try:
            update = train_client(client.client_id, client.task, client.examples, prompt, round_index, engines,
                                  settings, on_step=on_step)
        except Exception as exc:  # one failing client must not stop the round
            update = ClientUpdate(client.client_id, round_index, prompt, prompt, error=f"{type(exc).__name__}: {exc}")
        return release_update(update, client.examples, outbound.for_client(client.client_id))

    def train_round(client_ids: list[str], prompt: str, round_index: int) -> list[ClientUpdate]:
        return run_concurrently([lambda c=by_id[cid]: train_one(c, prompt, round_index) for cid in client_ids])

    return train_round


def run_experiment(exp: Experiment, engines: Engines, log: RunLog, *, resume: bool = False,
                   train_round: TrainRound | None = None) -> dict[str, Any]:
    """Run the experiment (or the rest of it after its checkpoint): zero-shot, the rounds, the final
    test; the results written to results.json."""
    run = _RoundLoop(exp, engines, log, train_round)
    state = run.open(resume)
    for round_index in range(state.round + 1, exp.rounds + 1):
        run.play_round(round_index)
    return run.finish()


class _RoundLoop:
    """This process's part of a run, phase by phase, checkpointing after each.

    The run's LLM cost is accumulated in the checkpoint, phase by phase, each phase counted by its own
    meter: engine counters are per process, and a process may host several runs (tests, a Flower
    server) or half of one. A Flower run's remote clients report their own cost in their updates.
    """

    def __init__(self, exp: Experiment, engines: Engines, log: RunLog, train_round: TrainRound | None) -> None:
        self.exp, self.engines, self.log = exp, engines, log
        self.started = time.monotonic()  # this process's wall time not yet in state.wall_seconds
        self.console = progress.current()
        self.in_process = train_round is None
        self.train_round = train_round or train_in_process(exp.clients, engines, exp.settings, on_step=self._tick,
                                                           outbound=exp.outbound)
        self.steps_bar: progress.StepsPhase | None = None
        self.early_round: Future[list[ClientUpdate]] | None = None  # round 1, started beside the zero-shot
        self.phase_cost = EngineStats()  # the phase under way (a round with its retries, the final test)
        # Restarts are counted per process, which may host several runs (tests, a Flower server): this run's own.
        self.restarts_mark = current_runtime().embedded.restarts
        self.seconds_before: dict[str, float] = {}  # per phase, of the processes before this one
        self.evaluate = Evaluator(exp, engines)
        self.state: RunState

    def open(self, resume: bool) -> RunState:
        """The state of the checkpoint to resume from, or that of a zero-shot evaluation run now."""
        saved = self.log.load_checkpoint() if resume else None  # None: it stopped before its first checkpoint
        state = RunState.from_dict(saved) if saved is not None else None
        if resume:
            progress.note(_resume_note(self.log, state, self.exp.rounds))
        self.console.open_rounds(self.exp.rounds, state.round if state is not None else 0)
        if state is None:
            return self._zero_shot()
        self.state = state
        self.evaluate = Evaluator(self.exp, self.engines, state.eval_judge_failures)
        self.seconds_before = dict(state.phase_seconds)
        self.log.event("resume", from_round=state.round)
        return state

    def _zero_shot(self) -> RunState:
        exp, engines, log = self.exp, self.engines, self.log
        if self.in_process:
            # Round 1 trains from the starting prompt and needs the zero-shot accuracies only when it is
            # recorded, so it starts now; the zero-shot calls run at background priority in the endpoint
            # slots its training leaves idle. (A Flower transport owns its clients: it keeps the order.)
            self._start_round_one()
        try:
            with background(), metered() as zero_shot_cost, self.console.phase(
                    "zero_shot", "zero-shot", _zero_shot_calls(exp, self.evaluate, engines)) as zero_shot:
                state = zero_shot.run(_with_retries, "the zero-shot evaluation", log, engines,
                                      lambda _: zero_shot_state(exp, engines, log, self.evaluate))
        except BaseException as exc:
            # No training thread is left running behind the caller's back; after Ctrl-C it stops by itself.
            if self.early_round is not None and not isinstance(exc, KeyboardInterrupt):
                self.early_round.exception()
                self.steps_bar.close()  # type: ignore[union-attr]
            raise
        self.state = state
        state.eval_judge_failures = self.evaluate.judge_failures
        # Its own meter counts the zero-shot calls; round 1, running beside it, counts in the round's.
        state.llm = zero_shot_cost.as_dict()
        state.phase_seconds = dict(self.console.seconds)
        _print_estimate(exp, log, add_counts(state.llm, self.phase_cost.as_dict()), self.started, self.steps_bar,
                        judged=engines.judge is not None)
        log.save_checkpoint(state.to_dict())
        return state

    def _start_round_one(self) -> None:
        selected, bar = self._open_steps_bar(1)
        with metered(self.phase_cost):  # the thread counts in round 1's meter (it copies this context)
            self.early_round = _start_in_thread(bar.run, self.train_round, selected, starting_prompt(self.exp.tasks), 1)

    def play_round(self, round_index: int) -> None:
        """Train, merge, validate and record one round (retrying it if the endpoint fails); checkpoint."""
        state = self.state
        with metered(self.phase_cost):
            summary = _with_retries(f"round {round_index}", self.log, self.engines,
                                    functools.partial(self._train_and_record, round_index),
                                    self._keep_cost_of_failed_tries)
        # What this round cost, including its retries: in-process counters, so a Flower run's remote
        # clients report their own in their updates instead.
        summary.llm, self.phase_cost = self.phase_cost.as_dict(), EngineStats()
        summary.context_overflows = summary.llm.get("context_overflows", 0)
        state.llm = add_counts(state.llm, summary.llm)
        self.log.event("round", **summary.public())
        state.record_round(summary)
        state.eval_judge_failures = self.evaluate.judge_failures
        state.wall_seconds += time.monotonic() - self.started
        state.phase_seconds = add_seconds(self.seconds_before, self.console.seconds)
        self.started = time.monotonic()
        self.log.save_checkpoint(state.to_dict())
        self.console.round_done(summary.val["mean"], state.best.val, state.best.round)

    def _train_and_record(self, round_index: int, last_try: bool) -> RoundSummary:
        updates = self._local_steps(round_index)
        lost = [error for error in map(_engine_failure, updates) if error]
        # In-process clients share the endpoints, so one that lost them met a transient fault: the round
        # is retried (the others replay from the cache) and transient faults leave the results unchanged.
        # Flower clients own their endpoints: the round goes on without theirs, as on a last try.
        if lost and (len(lost) == len(updates) or (self.in_process and not last_try)):
            raise EngineError(lost[0])
        return record_round(self.exp, self.engines, self.log, self.evaluate, round_index, updates)

    def _local_steps(self, round_index: int) -> list[ClientUpdate]:
        """The round's client updates: round 1's from its early start (its first try), else trained now."""
        if self.early_round is not None:
            started_early, self.early_round = self.early_round, None
            try:
                return started_early.result()
            finally:
                self.steps_bar.close()  # type: ignore[union-attr]
        selected, bar = self._open_steps_bar(round_index)
        try:
            return bar.run(self.train_round, selected, self.state.global_prompt, round_index)
        finally:
            bar.close()

    def _open_steps_bar(self, round_index: int) -> tuple[list[str], progress.StepsPhase]:
        """The clients chosen for the round, and the progress bar of their local steps."""
        exp = self.exp
        selected = select_clients([c.client_id for c in exp.clients], exp.clients_per_round, exp.settings.seed,
                                  round_index)
        by_id = {c.client_id: c for c in exp.clients}
        self.steps_bar = self.console.steps_phase("local_steps", f"round {round_index}: local steps",
                                                  len(selected) * exp.settings.max_steps,
                                                  step_calls(exp, [by_id[c] for c in selected]), len(selected))
        return selected, self.steps_bar

    def _tick(self) -> None:
        if self.steps_bar is not None:
            self.steps_bar.step_done()

    def _keep_cost_of_failed_tries(self) -> None:
        # A stopped phase's calls, retries and time are still the run's cost: kept with the last checkpoint
        # (events.jsonl is already back at its size).
        self.state.llm = add_counts(self.state.llm, self.phase_cost.as_dict())
        self.state.phase_seconds = add_seconds(self.seconds_before, self.console.seconds)
        self.log.save_checkpoint(self.state.to_dict())

    def finish(self) -> dict[str, Any]:
        """The final test of the last and the best prompt; results.json written."""
        with metered(self.phase_cost):
            return _with_retries("the final test evaluation", self.log, self.engines, self._final_test,
                                 self._keep_cost_of_failed_tries)

    def _final_test(self, _last_try: bool) -> dict[str, Any]:
        exp, evaluate = self.exp, self.evaluate
        last, best = self.state.global_prompt, self.state.best.prompt
        total = evaluate.pending_calls(last, exp.test_sets) + evaluate.pending_calls(best, exp.test_sets)
        with self.console.phase("final_test", "final test", total) as final:
            # Usually answered from the evaluator's memo: the last round tested its aggregate, zero-shot the start.
            tests = final.run(run_concurrently, [lambda: evaluate(last, exp.test_sets),
                                                 lambda: evaluate(best, exp.test_sets)])
        return write_results(exp, self.engines, self.log, evaluate, self.state, tests, self.phase_cost,
                             started=self.started, phase_seconds=add_seconds(self.seconds_before, self.console.seconds),
                             restarts_mark=self.restarts_mark)


def _zero_shot_calls(exp: Experiment, evaluate: Evaluator, engines: Engines) -> int:
    prompt = starting_prompt(exp.tasks)
    calls = evaluate.pending_calls(prompt, exp.val_sets) + evaluate.pending_calls(prompt, exp.test_sets)
    if exp.run_larger_model:
        calls += evaluate.pending_calls(prompt, exp.test_sets, engines.evaluation)
    return calls


def _print_estimate(exp: Experiment, log: RunLog, done: dict[str, int], started: float,
                    steps: progress.StepsPhase | None, judged: bool) -> None:
    """After the zero-shot phase: the time the whole run will take at the pace of its calls so far
    (`done`: the run's LLM counters until now)."""
    calls_done = done["calls"] + done["cache_hits"]
    # Round 1's local steps so far tell how many calls a round's steps make (its bar's expected total).
    per_round = steps.total if steps is not None and steps.total else step_calls(
        exp, exp.clients[:exp.clients_per_round])
    plan = progress.RunPlan(
        rounds=exp.rounds, step_calls=per_round,
        merge_calls=int(exp.aggregate_method not in (None, "concat") and len(exp.clients) > 1),
        val_calls=eval_calls(exp.val_sets, judged), test_calls=eval_calls(exp.test_sets, judged))
    # Round 1's calls so far are part of calls_done already.
    remaining = max(0, plan.calls() - (steps.done() if steps is not None else 0))
    line, seconds = progress.estimate_line(time.monotonic() - started, calls_done, done["calls"], remaining)
    progress.note(line)
    log.event("estimate", seconds=round(seconds, 1), llm_calls=calls_done + remaining)


def _resume_note(log: RunLog, state: RunState | None, rounds: int) -> str:
    name = log.run_dir.name
    if state is None:
        return f"resuming {name}: it stopped before its first checkpoint, so it starts over"
    done = state.round
    if done >= rounds:
        return f"resuming {name}: all {rounds} rounds are done; only the final test is left"
    return f"resuming {name} from its checkpoint after round {done}: continuing with round {done + 1} of {rounds}"


def _start_in_thread(fn: Callable[..., T], *args: Any) -> Future[T]:
    """fn(*args) in a thread of its own, in a copy of the caller's context (priority, meters)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtextgrad-round")
    future = executor.submit(contextvars.copy_context().run, fn, *args)
    executor.shutdown(wait=False)  # the thread ends when fn returns
    return future


def _engine_failure(update: ClientUpdate) -> str | None:
    """The endpoint's error if this client failed on an LLM call (train_in_process records type: message)."""
    prefix = f"{EngineError.__name__}: "
    return update.error[len(prefix):] if update.error and update.error.startswith(prefix) else None


def _endpoints_answer(engines: Engines) -> bool:
    try:
        for engine in dict.fromkeys([engines.test, engines.evaluation]):
            engine.check_available()
    except EngineError:
        return False
    return True


def _with_retries(phase: str, log: RunLog, engines: Engines, attempt: Callable[[bool], T],
                  on_stop: Callable[[], None] | None = None) -> T:
    """Run attempt(last_try); when the LLM endpoint fails it, drop the phase's events, wait and try again:
    once if the endpoint is down, up to PHASE_TRIES in all if it still answers. Then call on_stop and stop
    the run at its last checkpoint with the command that resumes it."""
    events_size = log.events_size()
    for tries in range(1, PHASE_TRIES + 1):
        try:
            return attempt(tries == PHASE_TRIES)
        except EngineError as exc:
            log.truncate_events(events_size)  # the next try (or the resumed run) writes them again
            if tries == PHASE_TRIES or (tries >= 2 and not _endpoints_answer(engines)):
                if on_stop is not None:
                    on_stop()
                raise RunStopped(
                    f"{phase} failed {tries} times because the LLM endpoint failed ({exc}); the run stopped at "
                    f"its last checkpoint: restart or fix the server, then continue with python main.py --resume "
                    f"--run_name {log.run_dir.name} --output_dir {log.run_dir.parent}") from None
            tqdm.write(f"warning: {phase} failed ({exc}); retrying it in {PHASE_RETRY_WAIT_S:.0f} s", file=sys.stderr)
            time.sleep(PHASE_RETRY_WAIT_S)
    raise AssertionError("unreachable")
