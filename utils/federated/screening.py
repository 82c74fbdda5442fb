"""Robust aggregation by screening (`--robust_aggregation screen`).

Before merging, the server answers a small seeded batch of its own validation questions
(`--screen_size` per task, drawn afresh each round) with every distinct client prompt, and leaves out
the prompts whose accuracy is below the round's best by more than `--screen_margin`. One poisoned
prompt (an injected instruction, or noise) then cannot reach the merge and every client's next
start. The answers it costs are the defence's price: counted and recorded per round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from textgrad.engine import ChatEngine
from textgrad.parallel import run_concurrently
from textgrad.serving.stats import metered
from utils.reporting.tracking import RunLog
from utils.tasks.evaluation import evaluate_on_tasks
from utils.tasks.registry import Example, TaskSpec

from .client import ClientUpdate

_SETS = dict[str, tuple[TaskSpec, list[Example]]]


@dataclass(frozen=True)
class ScreenSettings:
    method: str = "none"  # "none" | "screen" (utils.config.ROBUST_AGGREGATIONS)
    size: int = 5  # validation questions per task
    margin: float = 0.2


@dataclass
class Screening:
    accuracy: dict[str, float]  # client -> accuracy of its prompt on the screening batch (mean over tasks)
    left_out: dict[str, str]  # client -> why it was left out of the merge
    questions: int  # screening questions each distinct prompt answered
    prompts_screened: int  # distinct prompts answered (clients sending the same prompt share its answers)
    requests: int  # answers the screening asked for, from the server or the response cache
    llm_calls: int  # of them, the requests that reached an LLM server (the rest were cache hits)
    skipped: str | None = None  # why nothing was screened

    def kept(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        return [u for u in updates if u.client_id not in self.left_out]


def screening_sets(val_sets: _SETS, size: int, seed: int, round_index: int) -> _SETS:
    """`size` validation questions per task, seeded by round, in validation order."""
    rng = random.Random(f"{seed}:screen:{round_index}")
    chosen: _SETS = {}
    for name, (task, examples) in val_sets.items():
        picked = sorted(rng.sample(range(len(examples)), min(size, len(examples))))
        chosen[name] = (task, [examples[i] for i in picked])
    return chosen


def below_margin(best: float, accuracy: float, margin: float) -> bool:
    # Rounded: 0.8 - 0.6 is 0.20000000000000007 in floating point, which is not "more than 0.2".
    return round(best - accuracy, 9) > margin


def screen_updates(settings: ScreenSettings, updates: list[ClientUpdate], sets: _SETS | None, engine: ChatEngine, *,
                   max_tokens: int = 512, judge: ChatEngine | None = None) -> Screening | None:
    """None when screening is off; otherwise who is kept and who is left out, and what it cost. sets: the
    round's screening questions (screening_sets, in the run's plan)."""
    if settings.method == "none" or sets is None:
        return None
    questions = sum(len(examples) for _, examples in sets.values())
    prompts = list(dict.fromkeys(u.prompt for u in updates))
    if len(prompts) < 2:
        return Screening({}, {}, questions, 0, 0, 0, skipped="fewer than two distinct client prompts")
    with metered() as cost:
        scored = run_concurrently([lambda p=p: evaluate_on_tasks(p, sets, engine, max_tokens=max_tokens,
                                                                 judge=judge)[0]["mean"] for p in prompts])
    by_prompt = dict(zip(prompts, scored, strict=True))
    accuracy = {u.client_id: by_prompt[u.prompt] for u in updates}
    best = max(accuracy.values())
    left_out = {client: f"screening accuracy {acc:.2f} is more than {settings.margin:g} below the round's best "
                        f"{best:.2f}" for client, acc in accuracy.items() if below_margin(best, acc, settings.margin)}
    return Screening(accuracy, left_out, questions, len(prompts), len(prompts) * questions, cost.calls)


def record_screening(log: RunLog, round_index: int, screening: Screening | None) -> dict[str, Any]:
    """The round's screening event and comet metrics; its entry in the round summary (results.json)."""
    if screening is None:
        return {"screening": None}
    record = vars(screening).copy()
    log.event("screening", round=round_index, **record)
    log.metric("screen/left_out", len(screening.left_out), round_index)
    log.metric("screen/requests", screening.requests, round_index)
    return {"screening": record}


def screening_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json's run-wide screening cost and who was left out in which round."""
    rounds = [r for r in history if r.get("screening")]
    if not rounds:
        return {}
    return {"screening": {
        "requests": sum(r["screening"]["requests"] for r in rounds),
        "llm_calls": sum(r["screening"]["llm_calls"] for r in rounds),
        "left_out": {str(r["round"]): sorted(r["screening"]["left_out"]) for r in rounds},
    }}
