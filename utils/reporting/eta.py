"""How long a run takes: what is left of its plan, priced kind by kind at the pace its calls had so far.

The round loop asks after the zero-shot evaluation and after every round. What is left comes from the
run's plan (utils.federated.plan: its calls by kind), the pace from a CallPace that timed every request
of the run (textgrad.serving.stats): the wall seconds charged to each kind of request, a request sharing
the time with the others in flight. So an optimizer call that writes 500 tokens weighs what it weighed
so far, not what a 64-token answer weighs, and calls that ran side by side are not counted twice.
"""

from __future__ import annotations

import time

from textgrad.serving.stats import Pace
from utils.federated.plan import Calls, RunPlan

# Requests not every engine makes (only those that give log-probabilities measure UID): free until seen.
OPTIONAL_KINDS = ("logprob",)


def seconds_per_call(pace: Pace) -> dict[str, float]:
    """Wall seconds one request of each measured kind adds, at the crowding the run had."""
    return {kind: pace.seconds[kind] / n for kind, n in pace.calls.items() if n}


def as_made(left: dict[str, int], planned: dict[str, int], sent: dict[str, int]) -> dict[str, float]:
    """What is left of the plan as the run has been making its calls: each kind scaled by the share of its
    planned calls so far that were sent. The plan assumes the costlier outcome (every step re-scores, every
    round merges and validates a new prompt); the run knows how often that held, and which calls the
    response cache or the evaluator's memo answered."""
    return {kind: n * (sent.get(kind, 0) / planned[kind] if planned.get(kind) else 1.0) for kind, n in left.items()}


def remaining_seconds(pace: Pace, left: dict[str, float], elapsed: float, sent_share: float = 1.0) -> float:
    """Wall seconds the `left` requests (by kind) take: each kind at its pace so far, a kind not timed yet at
    the mean pace of every request so far (OPTIONAL_KINDS at none). The sum is stretched by the run's share
    of time with no request in flight (scoring, files: elapsed over busy seconds), and shrunk to the share
    of calls sent rather than answered by the cache so far (sent_share)."""
    paces = seconds_per_call(pace)
    timed = sum(pace.calls.values())
    mean = sum(pace.seconds.values()) / timed if timed else 0.0
    busy_left = sum(n * paces.get(kind, 0.0 if kind in OPTIONAL_KINDS else mean) for kind, n in left.items())
    stretch = elapsed / pace.busy if pace.busy > 0 else 1.0
    return busy_left * stretch * sent_share


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(when: str, elapsed: float, left_seconds: float, total_calls: int, pace: Pace,
                  left: dict[str, float]) -> str:
    """The line printed after `when` ("the zero-shot evaluation", "round 1"): the run's whole time, when it
    ends, and the pace of each kind of call it is based on; kinds still to come that were not timed yet
    are named, as their pace is a guess."""
    total = elapsed + left_seconds
    finish = time.strftime("%H:%M", time.localtime(time.time() + left_seconds))
    paces = ", ".join(f"{kind} {seconds:.{1 if seconds >= 1 else 2}f} s"
                      for kind, seconds in sorted(seconds_per_call(pace).items()))
    guessed = [kind for kind, n in left.items() if n and kind not in pace.calls and kind not in OPTIONAL_KINDS]
    if guessed:
        paces = f"{paces or 'none timed yet'}; {', '.join(guessed)} not timed yet, so at the mean"
    return (f"estimate after {when}: the whole run takes about {duration(total)} (done around {finish}), "
            f"{total_calls} LLM calls by its plan, each kind at its pace so far ({paces or 'no request timed yet'}); "
            "--split_sizes, --max_steps and --rounds make it shorter")


def left_of_plan(plan: RunPlan, done_round: int, pace: Pace, counts: dict[str, int] | None = None
                 ) -> tuple[dict[str, float], float] | None:
    """What is left of the plan after round done_round, kind by kind, and the share of the run's calls that
    were sent rather than answered by the cache (counts: the run's calls and cache hits so far, after the
    zero-shot evaluation); None when only the final test is left, which the last round ran."""
    left_plan = plan.after(done_round)
    if not left_plan.rounds:
        return None
    left: dict[str, float] = dict(left_plan.kinds().by_kind())
    if done_round == 0:  # round 1 runs beside the zero-shot evaluation: its calls so far are not left
        zero_shot = sum((e.kinds for e in plan.zero_shot), Calls()).by_kind()
        left = {kind: max(0, n - max(0, pace.calls.get(kind, 0) - zero_shot[kind])) for kind, n in left.items()}
        return left, counts["calls"] / max(1, counts["calls"] + counts["cache_hits"]) if counts else 1.0
    # The rounds so far tell how much of its plan the run really sends.
    planned = {kind: n - left[kind] for kind, n in plan.kinds().by_kind().items()}
    return as_made(left, planned, pace.calls), 1.0
