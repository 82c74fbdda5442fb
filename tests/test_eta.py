"""The run's estimated time: requests timed by kind (textgrad.serving.stats.CallPace) and what is left of the
plan priced at each kind's pace (utils.reporting.eta). Every value here is worked out by hand."""

from __future__ import annotations

import threading

import pytest

from textgrad.parallel import run_concurrently
from textgrad.serving.stats import CallPace, Pace, call_kind, on_the_wire, paced
from utils.reporting import eta


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_in_flight_together_share_the_wall_time() -> None:
    clock = Clock()
    pace = CallPace(clock)
    optimizer = pace.begin()           # t=0: one request alone
    clock.now = 2.0
    answer = pace.begin()              # t=2: two in flight, each charged half of every second
    clock.now = 4.0
    pace.end("answer", answer)         # the answer: 2 s in flight, charged 1 s
    clock.now = 5.0
    pace.end("optimizer", optimizer)   # the optimizer: 2 s alone + 1 s shared + 1 s alone = 4 s
    clock.now = 7.0                    # nothing in flight: not busy
    measured = pace.snapshot()
    assert measured.calls == {"answer": 1, "optimizer": 1}
    assert measured.seconds == pytest.approx({"answer": 1.0, "optimizer": 4.0})
    assert measured.busy == pytest.approx(5.0)  # the charges add up to the time with a request in flight


def test_the_kind_of_a_request_is_the_callers_also_in_the_threads_it_starts() -> None:
    pace = CallPace()
    with paced(pace):
        with call_kind("feedback"):
            for _ in range(2):
                with on_the_wire():
                    pass
            run_concurrently([lambda: _one_request() for _ in range(3)])
        with on_the_wire("logprob"):  # the transport names a log-probability request itself
            pass
        with on_the_wire():
            pass
    with on_the_wire():  # outside the block: not this pace's
        pass
    assert pace.snapshot().calls == {"feedback": 5, "logprob": 1, "other": 1}


def _one_request() -> None:
    with on_the_wire():
        threading.Event().wait(0.001)


def test_the_time_left_is_each_kind_at_its_pace() -> None:
    pace = Pace(calls={"answer": 10, "optimizer": 2}, seconds={"answer": 5.0, "optimizer": 10.0}, busy=15.0)
    # 20 answers at 0.5 s and 3 optimizer calls at 5 s: 25 s of requests. Stretched x2 when the run was busy
    # 15 s of its 30 s (scoring, files), and x0.8 when a fifth of its calls so far came from the cache.
    assert eta.remaining_seconds(pace, {"answer": 20, "optimizer": 3}, elapsed=15.0) == pytest.approx(25.0)
    assert eta.remaining_seconds(pace, {"answer": 20, "optimizer": 3}, elapsed=30.0) == pytest.approx(50.0)
    assert eta.remaining_seconds(pace, {"answer": 20, "optimizer": 3}, elapsed=30.0, sent_share=0.8) == \
        pytest.approx(40.0)


def test_what_is_left_is_scaled_by_how_much_of_its_plan_the_run_really_sent() -> None:
    # 12 re-scores planned and 8 sent (steps whose rewrite was unusable skip theirs): 2/3 of the 30 answers
    # left; merges as planned; logprob requests half answered by the memo; judge not planned so far: as is.
    left = eta.as_made({"answer": 30, "merge": 1, "logprob": 4, "judge": 6},
                       planned={"answer": 12, "merge": 1, "logprob": 4, "judge": 0},
                       sent={"answer": 8, "merge": 1, "logprob": 2})
    assert left == pytest.approx({"answer": 20.0, "merge": 1.0, "logprob": 2.0, "judge": 6.0})


def test_a_kind_not_timed_yet_goes_at_the_mean_pace_and_log_probabilities_are_free_until_seen() -> None:
    pace = Pace(calls={"answer": 10, "optimizer": 2}, seconds={"answer": 5.0, "optimizer": 10.0}, busy=15.0)
    mean = 15.0 / 12
    assert eta.remaining_seconds(pace, {"merge": 2, "logprob": 4}, elapsed=15.0) == pytest.approx(2 * mean)
    timed = Pace(calls={"logprob": 2}, seconds={"logprob": 3.0}, busy=3.0)
    assert eta.remaining_seconds(timed, {"logprob": 4}, elapsed=3.0) == pytest.approx(6.0)
    nothing = Pace(calls={}, seconds={}, busy=0.0)  # everything so far came from the cache
    assert eta.remaining_seconds(nothing, {"answer": 5}, elapsed=2.0) == 0.0


def test_the_estimate_line_names_the_whole_time_and_each_kinds_pace() -> None:
    pace = Pace(calls={"answer": 10, "feedback": 4}, seconds={"answer": 5.0, "feedback": 8.0}, busy=13.0)
    line = eta.estimate_line("round 1", elapsed=100.0, left_seconds=50.0, total_calls=152, pace=pace,
                             left={"answer": 30, "feedback": 9, "logprob": 4})
    assert line.startswith("estimate after round 1: the whole run takes about 2 min (done around ")
    assert "152 LLM calls by its plan" in line and "(answer 0.50 s, feedback 2.0 s)" in line
    early = eta.estimate_line("the zero-shot evaluation", elapsed=10.0, left_seconds=50.0, total_calls=152,
                              pace=pace, left={"answer": 30, "optimizer": 3, "merge": 1, "logprob": 4, "judge": 0})
    assert "(answer 0.50 s, feedback 2.0 s; optimizer, merge not timed yet, so at the mean)" in early
    assert [eta.duration(s) for s in (89, 95, 5399, 5400)] == ["89 s", "2 min", "90 min", "1.5 h"]
