"""The round loop: the server's side of FedTextGrad, shared by the three training modules.

    zero-shot evaluation of the starting prompt (validation and test)
    for each round:
        choose this round's clients
        each chosen client: max_steps local steps from the global prompt, side by side
        collect the prompts they return
        screen them (--robust_aggregation screen), aggregate the rest into one prompt
        validate the aggregate; keep the best prompt so far
        record the round; checkpoint
    final test of the last and the best prompt

A client's local step is utils.federated.client.local_step. Which clients train in a round, on which
batches, and what each evaluation costs comes from the run's plan (utils.federated.plan), which the
progress bars and --estimate read too. What the loop records: utils.federated.recording; its
checkpoint: utils.federated.run_state; how a phase is tried again when the LLM endpoint fails it:
utils.federated.phases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from textgrad.errors import EngineError
from textgrad.parallel import run_concurrently
from textgrad.serving.runtime import current_runtime
from textgrad.serving.slots import background
from textgrad.serving.stats import CallPace, EngineStats, metered, paced
from utils.reporting import eta, progress
from utils.reporting.prompt_stats import measure_prompt, measure_prompts
from utils.reporting.tracking import RunLog

from .aggregation import Aggregate, aggregate_prompts, warn_if_over_budget
from .checkpoint import read_checkpoint
from .client import ClientUpdate, Engines, TrainRound, train_in_process
from .experiment import Evaluator, Experiment, starting_prompt
from .phases import RoundFailed, in_background, lost_endpoint, with_retries
from .plan import Evaluation, Round, plan_run
from .recording import record_round, record_updates, record_zero_shot, write_results
from .run_state import RoundSummary, RunState, Scores, add_counts, add_seconds, keep_best
from .screening import Screening, screen_updates

logger = logging.getLogger(__name__)


def run_experiment(exp: Experiment, engines: Engines, log: RunLog, *, resume: bool = False,
                   train_round: TrainRound | None = None, meanwhile: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the experiment, or the rest of it after its checkpoint; results.json's content. meanwhile: work
    the first requests need not wait for (the run's config and estimate files), done while they are answered."""
    loop = RoundLoop(exp, engines, log, train_round)
    with paced(loop.pace):  # every request of the run timed by kind, for its estimated time
        try:
            loop.start(resume, meanwhile)  # the zero-shot evaluation, or the checkpoint to continue from
            for planned in loop.plan.rounds:  # the rounds still to run
                loop.play_round(planned)
            return loop.final_test()
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the calls made since the last checkpoint count
            loop.keep_cost_of_stopped_phase()
            raise


class RoundLoop:
    """This process's part of a run, phase by phase, checkpointing after each.

    The run's LLM cost is added to the checkpoint phase by phase, each phase counted by its own meter:
    engine counters are per process, and a process may host several runs (tests, a Flower server) or
    half of one. A Flower run's remote clients report their own cost in their updates.
    """

    def __init__(self, exp: Experiment, engines: Engines, log: RunLog, train_round: TrainRound | None) -> None:
        self.exp, self.engines, self.log = exp, engines, log
        self.plan = plan_run(exp, judge=engines.judge is not None)
        self.console = progress.current()
        self.evaluate = Evaluator(exp, engines)
        self.in_process = train_round is None
        self.train_round = train_round or train_in_process(engines, exp.settings, exp.outbound, self._step_done)
        self.steps_bar: progress.StepsPhase | None = None
        self.early_round: Future[list[ClientUpdate]] | None = None  # round 1, started beside the zero-shot
        self.state: RunState
        # Cost not yet in the checkpoint: the phase under way (a round with its retries, the final test),
        # this process's seconds, and the phase seconds of the processes before it.
        self.round_cost = EngineStats()
        self.started = time.monotonic()
        self.seconds_before: dict[str, float] = {}
        self.restarts_mark = current_runtime().embedded.restarts  # per process: this run's own restarts
        self.pace, self.began = CallPace(), time.monotonic()
        # A stop signal never lands between a state change and its checkpoint (StopFlag.deferred).
        self.stop = current_runtime().stop
        self.saved_events = 0  # events.jsonl's size at the last checkpoint

    def start(self, resume: bool, meanwhile: Callable[[], None] | None = None) -> None:
        """The zero-shot evaluation (meanwhile done while it runs), or the state of the checkpoint to resume from."""
        state = None
        if resume:
            # Checked whole before anything in the folder changes; None: it stopped before its first checkpoint.
            saved = read_checkpoint(self.log.run_dir, self.exp.rounds, [t.name for t in self.exp.tasks])
            self.saved_events = saved.events_size if saved is not None else 0
            self.log.rewind(self.saved_events)
            state = saved.state if saved is not None else None
            done = state.round if state is not None else None
            progress.note(progress.resume_note(self.log.run_dir.name, done, self.exp.rounds))
        self.console.open_rounds(self.exp.rounds, state.round if state is not None else 0)
        if state is None:
            self.state = self.zero_shot(meanwhile)
            return
        self.state, self.plan = state, self.plan.after(state.round)
        self.evaluate = Evaluator(self.exp, self.engines, state.eval_judge_failures)
        self.seconds_before = dict(state.phase_seconds)
        self.log.event("resume", from_round=state.round)

    # -- zero-shot ---------------------------------------------------------------------------------

    def zero_shot(self, meanwhile: Callable[[], None] | None = None) -> RunState:
        """Accuracy of the starting prompt on validation and test (and the evaluation engine's own test)."""
        prompt, evaluations = starting_prompt(self.exp.tasks, self.exp.initial_prompt), self.plan.zero_shot
        if self.in_process:
            # Round 1 trains from the starting prompt and needs the zero-shot accuracies only when it is
            # recorded, so it starts now; the zero-shot calls run at background priority in the endpoint
            # slots its training leaves idle. (A Flower transport owns its clients: it keeps the order.)
            self.early_round = self.start_local_steps(self.plan.rounds[0], prompt)
        try:
            with background(), metered() as cost:
                evaluated = in_background(self.evaluate_start, prompt, evaluations)
            try:
                if meanwhile is not None:  # this thread's own work, while the first replies are awaited
                    meanwhile()
            except BaseException as exc:
                if not isinstance(exc, KeyboardInterrupt):
                    evaluated.exception()  # no evaluation thread is left running either
                raise
            scores = evaluated.result()
        except BaseException as exc:
            # No training thread is left running behind the caller's back; after Ctrl-C it stops by itself.
            if self.early_round is not None and not isinstance(exc, KeyboardInterrupt):
                self.early_round.exception()
                self.steps_bar.close()  # type: ignore[union-attr]
            raise
        with self.stop.deferred():
            state = record_zero_shot(self.log, self.exp, self.engines, prompt, evaluations, scores)
            state.eval_judge_failures = self.evaluate.judge_failures
            # Its own meter counts the zero-shot calls; round 1, running beside it, counts in the round's.
            state.llm, state.phase_seconds = cost.as_dict(), dict(self.console.seconds)
            self.report_eta(0, add_counts(state.llm, self.round_cost.as_dict()))  # round 1's calls so far count too
            self.save(state)
        return state

    def evaluate_start(self, prompt: str, evaluations: tuple[Evaluation, ...]) -> list[Scores]:
        with self.console.phase("zero_shot", "zero-shot", self.plan.zero_shot_calls) as bar:
            return bar.run(with_retries, "the zero-shot evaluation", self.log, self.engines,
                           lambda _: run_concurrently([lambda e=e: self.evaluate(prompt, e) for e in evaluations]))

    # -- one round ---------------------------------------------------------------------------------

    def play_round(self, planned: Round) -> None:
        """One round, tried again if the LLM endpoint fails it; the best prompt kept; checkpointed."""
        with metered(self.round_cost):
            summary = with_retries(f"round {planned.index}", self.log, self.engines,
                                   lambda last_try: self.one_round(planned, last_try), self.keep_cost_of_failed_tries)
        with self.stop.deferred():
            keep_best(self.state, summary)
            self.checkpoint(summary)
        self.report_eta(planned.index)

    def one_round(self, planned: Round, last_try: bool) -> RoundSummary:
        """One try of a round, recorded. Its clients were chosen by the plan: a seeded draw of
        --clients_per_round (every client by default), the same in every view of the run."""
        updates = self.local_steps(planned)
        returned = self.collect(planned, updates, last_try)
        kept, screening = self.screen(planned, returned)
        # Measuring the returned prompts overlaps the merge and the validation (the critical path).
        lengths = in_background(measure_prompts, {u.client_id: u.prompt for u in returned}, self.engines.test)
        aggregate = self.aggregate(planned, kept)
        val, length = self.validate(planned, aggregate.prompt)
        return record_round(self.log, self.exp, self.engines, planned.index, updates, screening, kept, aggregate,
                            val, length, lengths.result())

    def local_steps(self, planned: Round) -> list[ClientUpdate]:
        """Each chosen client's max_steps local steps from the global prompt (round 1's started early)."""
        if self.early_round is not None:  # its first try only: a retry trains again
            started_early, self.early_round = self.early_round, None
            try:
                return started_early.result()
            finally:
                self.steps_bar.close()  # type: ignore[union-attr]
        bar = self.open_steps_bar(planned)
        try:
            return bar.run(self.train_round, planned, self.state.global_prompt)
        finally:
            bar.close()

    def collect(self, planned: Round, updates: list[ClientUpdate], last_try: bool) -> list[ClientUpdate]:
        """The updates that came back with a prompt. In-process clients share the endpoints, so one that lost
        them met a transient fault: the round is tried again (the others replay from the cache). Flower
        clients own their endpoints: the round goes on without theirs, as on a last try."""
        lost = [error for error in map(lost_endpoint, updates) if error]
        if lost and (len(lost) == len(updates) or (self.in_process and not last_try)):
            raise EngineError(lost[0])
        returned = [u for u in updates if not u.error]
        if not returned:
            record_updates(self.log, planned.index, updates, {})
            raise RoundFailed(f"every client failed in round {planned.index} ({updates[0].error}); fix the cause "
                              "and continue with --resume")
        return returned

    def screen(self, planned: Round, returned: list[ClientUpdate]) -> tuple[list[ClientUpdate], Screening | None]:
        """--robust_aggregation screen: prompts that answer the round's screening questions far worse than the
        best one are left out of the merge."""
        if planned.screening_sets is None:
            return returned, None
        with self.console.phase("screening", f"round {planned.index}: screening", planned.screening) as bar:
            screening = bar.run(screen_updates, self.exp.screening, returned, planned.screening_sets, self.engines.test,
                                max_tokens=self.exp.settings.answer_max_tokens, judge=self.engines.judge)
        return (screening.kept(returned) if screening else returned), screening

    def aggregate(self, planned: Round, kept: list[ClientUpdate]) -> Aggregate:
        """The kept prompts merged into the next global prompt (centralized: the one client's prompt is it):
        by an LLM in a tree of requests that fit (utils.federated.merge_tree), within --max_prompt_tokens."""
        method = self.exp.aggregate_method
        if method is None:
            return Aggregate(kept[0].prompt, "none")
        prompts = [u.prompt for u in kept]
        calls = planned.merge if len({p.strip() for p in prompts}) > 1 else 0  # one prompt: nothing to merge
        limits = self.exp.merge_limits
        with self.console.phase("aggregation", f"round {planned.index}: merge", calls) as merge:
            aggregate = merge.run(aggregate_prompts, prompts, method, self.exp.tasks, self.engines.writer("merge"),
                                  max_tokens=self.exp.merge_max_tokens,
                                  max_prompt_tokens=limits.max_prompt_tokens if limits else None,
                                  questions=[examples for _, examples in self.exp.val_sets.values()])
        if method == "concat" and limits is not None:
            warn_if_over_budget(planned.index, aggregate.prompt, limits.max_prompt_tokens, self.engines.test)
        return aggregate

    def validate(self, planned: Round, prompt: str) -> tuple[Scores, dict[str, Any]]:
        """The aggregate's validation accuracy and length. The last round's aggregate is the final "last"
        prompt: its test needs no validation result, so it runs beside the validation, not after it."""
        evaluate, test = self.evaluate, planned.last_test
        with self.console.phase("validation", f"round {planned.index}: validation",
                                evaluate.pending_calls(prompt, planned.validation)) as validation_bar, \
                self.console.phase("final_test", "final test (last prompt)",
                                   evaluate.pending_calls(prompt, test)) as test_bar:
            jobs = [lambda: validation_bar.run(evaluate, prompt, planned.validation),
                    lambda: measure_prompt(prompt, self.engines.test)]
            if test is not None:
                jobs.append(lambda: test_bar.run(evaluate, prompt, test))
            val, length = run_concurrently(jobs)[:2]
        return val, length

    def checkpoint(self, summary: RoundSummary) -> None:
        """The round and what it cost (its retries included) added to the state, saved as the checkpoint."""
        state = self.state
        # In-process counters, so a Flower run's remote clients report their own in their updates instead.
        summary.llm, self.round_cost = self.round_cost.as_dict(), EngineStats()
        summary.context_overflows = summary.llm.get("context_overflows", 0)
        state.llm = add_counts(state.llm, summary.llm)
        self.log.event("round", **summary.public())
        state.history.append(summary)
        state.round = summary.round
        state.eval_judge_failures = self.evaluate.judge_failures
        state.wall_seconds += time.monotonic() - self.started
        state.phase_seconds = add_seconds(self.seconds_before, self.console.seconds)
        self.started = time.monotonic()
        self.save(state)
        self.console.round_done(summary.val["mean"], state.best.val, state.best.round)

    def save(self, state: RunState) -> None:
        """state as checkpoint.json (with events.jsonl's size, which a resume cuts it back to)."""
        self.state = state
        self.log.save_checkpoint(state.to_dict())
        self.saved_events = self.log.events_size()

    # -- final test --------------------------------------------------------------------------------

    def final_test(self) -> dict[str, Any]:
        """Test accuracy of the last and the best prompt; results.json written."""
        with metered(self.round_cost):
            return with_retries("the final test evaluation", self.log, self.engines, self._final_test,
                                self.keep_cost_of_failed_tries)

    def _final_test(self, _last_try: bool) -> dict[str, Any]:
        last, best = self.state.global_prompt, self.state.best.prompt
        planned_last, planned_best = self.plan.final_test
        total = self.evaluate.pending_calls(last, planned_last) + self.evaluate.pending_calls(best, planned_best)
        with self.console.phase("final_test", "final test", total) as bar:
            # Usually answered from the evaluator's memo: the last round tested its aggregate, zero-shot the start.
            tests = bar.run(run_concurrently, [lambda: self.evaluate(last, planned_last),
                                               lambda: self.evaluate(best, planned_best)])
        return write_results(self.exp, self.engines, self.log, self.evaluate, self.state, tests, self.round_cost,
                             started=self.started, phase_seconds=add_seconds(self.seconds_before, self.console.seconds),
                             restarts_mark=self.restarts_mark)

    # -- bars and bookkeeping ----------------------------------------------------------------------

    def start_local_steps(self, planned: Round, prompt: str) -> Future[list[ClientUpdate]]:
        """The round's local steps in a thread of their own, ahead of the background work started beside
        them: until they end, the endpoint keeps the slots of their widest wave (a batch per client)."""
        bar = self.open_steps_bar(planned)
        widest = max((sum(len(c.steps[i].batch or ()) for c in planned.clients)
                      for i in range(self.exp.settings.max_steps)), default=0)
        endpoints = self.engines.endpoint_slots()
        for slots in endpoints:
            slots.reserve(widest)
        with metered(self.round_cost):  # the thread counts in the round's meter (it copies this context)
            steps = in_background(bar.run, self.train_round, planned, prompt)

        def end_reservation(_: Future[list[ClientUpdate]]) -> None:
            for slots in endpoints:
                slots.reserve(0)

        steps.add_done_callback(end_reservation)
        return steps

    def open_steps_bar(self, planned: Round) -> progress.StepsPhase:
        clients = len(planned.clients)
        self.steps_bar = self.console.steps_phase("local_steps", f"round {planned.index}: local steps",
                                                  clients * self.exp.settings.max_steps, planned.step_calls, clients)
        return self.steps_bar

    def _step_done(self) -> None:
        if self.steps_bar is not None:
            self.steps_bar.step_done()

    def report_eta(self, done_round: int, counts: dict[str, int] | None = None) -> None:
        """The whole run's time: what is left of its plan, each kind of call at its pace so far. Printed after
        the zero-shot evaluation (counts: the run's calls and cache hits by then) and after round 1, the first
        moment every kind of call has been timed; after every round on the rounds bar and in events."""
        pace, elapsed = self.pace.snapshot(), time.monotonic() - self.began
        left_now = eta.left_of_plan(self.plan, done_round, pace, counts)
        if left_now is None:
            return  # the final test is all that is left, and the last round ran it
        left, sent_share = left_now
        seconds = eta.remaining_seconds(pace, left, elapsed, sent_share)
        if done_round <= 1:
            when = "the zero-shot evaluation" if done_round == 0 else "round 1"
            progress.note(eta.estimate_line(when, elapsed, seconds, self.plan.calls(), pace, left))
        if done_round:
            self.console.time_left(eta.duration(seconds))
        self.log.event("estimate", after_round=done_round, seconds=round(elapsed + seconds, 1),
                       left_seconds=round(seconds, 1), llm_calls=self.plan.calls())

    def keep_cost_of_failed_tries(self) -> None:
        # A stopped phase's calls, retries and time are still the run's cost: kept with the last checkpoint
        # (events.jsonl is already back at its size).
        with self.stop.deferred():
            self.state.llm = add_counts(self.state.llm, self.round_cost.as_dict())
            self.round_cost = EngineStats()  # kept once, should a stop follow a failure
            self.state.phase_seconds = add_seconds(self.seconds_before, self.console.seconds)
            self.save(self.state)

    def keep_cost_of_stopped_phase(self) -> None:
        """After a stop signal: what the phase under way cost joins the last checkpoint, whose events.jsonl
        it cuts back to, so a resumed run counts the calls this process paid for. (A run stopped before its
        first checkpoint starts over and has nothing to add them to.)"""
        if getattr(self, "state", None) is None:
            return
        self.log.truncate_events(self.saved_events)
        self.keep_cost_of_failed_tries()
