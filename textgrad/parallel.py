"""Run independent LLM calls side by side.

Every call gets its own thread instead of sharing a fixed-size pool: callers
nest this (a round runs clients concurrently, each client runs its batch
concurrently), and a bounded pool would deadlock when outer tasks hold every
worker while waiting for inner ones. The real limit on load is the
per-endpoint cap (textgrad.serving.slots); threads here mostly sleep on I/O.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")


def run_concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run zero-argument callables concurrently and return results in input order.

    All calls are allowed to finish before anything is raised, so no thread is
    left running behind the caller's back; then the first exception in input
    order is re-raised. Only an interrupt (Ctrl-C) returns without waiting.
    """
    calls = list(calls)
    if len(calls) <= 1:
        # A thread for a single call buys nothing and hides tracebacks.
        return [call() for call in calls]

    pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="fedtextgrad")
    try:
        # Each call runs in a copy of the caller's context, so settings such as textgrad.serving.slots.background()
        # reach the threads (one copy per call: a context cannot be entered by two threads at once).
        futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if isinstance(future.exception(), KeyboardInterrupt):  # a call stopped by Ctrl-C: stop now
                    raise future.exception()  # type: ignore[misc]
        outcomes: list[tuple[bool, object]] = []
        for future in futures:
            try:
                outcomes.append((True, future.result()))
            except Exception as exc:  # re-raised below, in input order
                outcomes.append((False, exc))
    except BaseException:
        # Ctrl-C (or a call stopped by it): leave at once. The calls still running stop themselves
        # (textgrad.serving.interrupt) instead of being waited for.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()

    for ok, value in outcomes:
        if not ok:
            raise value  # type: ignore[misc]
    return [value for _, value in outcomes]  # type: ignore[misc]
