"""How much of a run's plan --estimate counts request by request, and the rest in closed form.

utils.estimate.requests counts a plan request by request, in time that grows with the run: a paper run
(thousands of requests) takes well under a second, a grid of 10,000 rounds would take hours (and its
plan alone minutes to build). So a run of more than WALK_BUDGET requests is walked only in part: its first
rounds, and, when one round alone is that large, the first local steps of each. The rest is scaled from
the walk: each client's local steps of a round cost what its walked steps cost on average, and every round
after the walked ones costs what the later half of the walked rounds cost on average (prompts stop growing
at their token limits, so rounds settle to one cost). Calls come out exact for runs whose rounds are alike (every client in every
round); tokens are an estimate either way. The time this takes no longer depends on the number of rounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from utils.federated.experiment import Experiment
from utils.federated.plan import RunPlan, eval_calls, plan_run, step_calls

from .requests import UID_PHASE, CallPlan, Line, Tally

WALK_BUDGET = 20_000  # requests counted one by one, at most: about a second
_ROUND_PHASE = re.compile(r"round (\d+) (.+)")


@dataclass(frozen=True)
class Walk:
    experiment: Experiment  # what is walked: the run, or its first rounds with their first local steps
    plan: RunPlan           # the walked plan (from the checkpoint on, when resuming)
    rounds: int             # rounds the run has left
    steps: int              # local steps per client per round of the run

    @property
    def walked_rounds(self) -> int:
        return len(self.plan.rounds)

    @property
    def walked_steps(self) -> int:
        return self.experiment.settings.max_steps

    @property
    def scaled(self) -> bool:
        return (self.walked_rounds, self.walked_steps) != (self.rounds, self.steps)

    def note(self) -> str:
        return (f"scaled    walked {self.walked_rounds} of the {self.rounds} rounds left and {self.walked_steps} of "
                f"the {self.steps} local steps per client and round, request by request; the rest is scaled "
                "from them (utils/estimate/walk.py)")


def plan_walk(exp: Experiment, judge: bool, done: int | None) -> Walk:
    """The part of the run (resumed after round `done`, if given) that is counted request by request."""
    left, steps = exp.rounds - (done or 0), exp.settings.max_steps
    client_step = step_calls(exp.settings.batch_size, judge).total  # a full batch: an upper bound
    step_round = exp.clients_per_round * client_step
    other = eval_calls(exp.val_sets, judge).total + 1  # validation and merge
    walked_rounds = left
    if left * (steps * step_round + other) > WALK_BUDGET:
        steps = max(1, min(steps, WALK_BUDGET // max(step_round, 1)))
        walked_rounds = max(1, min(left, WALK_BUDGET // (steps * step_round + other)))
    walked = replace(exp, rounds=(done or 0) + walked_rounds, settings=replace(exp.settings, max_steps=steps))
    plan = plan_run(walked, judge=judge)
    return Walk(walked, plan.after(done) if done is not None else plan, left, exp.settings.max_steps)


def extrapolate(calls: CallPlan, walk: Walk) -> CallPlan:
    """The counts of the whole run from those of its walk: local steps scaled to every step of a round, the
    rounds after the walked ones each costing the average of the walk's later half (clients' batch sizes vary
    from round to round; prompts grow during the first rounds), and UID measures (a few per round) with them."""
    if not walk.scaled:
        return calls
    step_factor = walk.steps / walk.walked_steps
    indices = [r.index for r in walk.plan.rounds]
    reference = indices[len(indices) // 2:]  # the later half of the walked rounds
    later = walk.rounds - walk.walked_rounds
    lines: list[Line] = []
    for line in calls.lines:
        match = _ROUND_PHASE.fullmatch(line.phase)
        factor = step_factor if match and match.group(2) == "local steps" else 1.0
        if line.phase == UID_PHASE and walk.walked_rounds:
            factor = walk.rounds / walk.walked_rounds
        lines.append(replace(line, tally=_scaled(line.tally, factor)))
        if match and int(match.group(1)) in reference and later:
            phase = f"rounds {indices[-1] + 1}-{indices[-1] + later} {match.group(2)}"
            lines.append(Line(phase, line.engine, line.kind, _scaled(line.tally, factor * later / len(reference))))
    return CallPlan(lines, calls.conditional)


def _scaled(tally: Tally, factor: float) -> Tally:
    return Tally(calls=round(tally.calls * factor), cached=round(tally.cached * factor),
                 prompt_tokens=tally.prompt_tokens * factor, completion_tokens=tally.completion_tokens * factor)
