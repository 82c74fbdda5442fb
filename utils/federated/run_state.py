"""The round loop's state (checkpoint.json) and its summary of each round (results.json's `rounds`).

Their dictionaries are the documented file formats: to_dict() writes exactly the keys and values the
files have always held, from_dict() reads them back (a checkpoint's extra keys, such as events_size,
belong to utils.reporting.tracking).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Scores = dict[str, float]  # task name -> accuracy, and "mean"


@dataclass
class BestPrompt:
    """The prompt of the best validation mean so far (round 0: the starting prompt)."""

    round: int
    val: float
    prompt: str


@dataclass
class RoundSummary:
    """What one round did and cost; results.json lists them without `aggregate` (in prompts/ instead)."""

    round: int
    val: Scores
    aggregate: str
    aggregate_chars: int
    aggregate_tokens: int
    clients: list[str]
    failed_clients: list[str]
    client_train_accuracy: dict[str, float | None]
    aggregate_uid: dict[str, Any] | None
    client_prompt_tokens: dict[str, int]
    client_prompt_chars: dict[str, int]
    # Rounds checkpointed before the flag existed counted characters / 4: estimated.
    prompt_tokens_estimated: bool = True
    steps: int = 0
    accepted_steps: int = 0
    skipped_steps: int = 0
    optimizer_failures: dict[str, int] = field(default_factory=dict)
    judge_format_failures: int = 0
    aggregation_failure: str | None = None
    poisoned_clients: list[str] = field(default_factory=list)
    leakage: dict[str, Any] | None = None     # utils.privacy.leakage.record_leakage
    screening: dict[str, Any] | None = None   # utils.federated.screening.record_screening
    # Complexity (utils.reporting.complexity): the aggregate's entropy and compression ratio, and each returned
    # client prompt's with its UID measures. None / {} in rounds checkpointed before they were recorded.
    aggregate_complexity: dict[str, Any] | None = None
    client_prompt_complexity: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Set once the round is done: its LLM counters, retries included (in-process calls only).
    llm: dict[str, int] = field(default_factory=dict)
    context_overflows: int = 0
    # utils.federated.merge_tree.MergeTree.to_dict(): requests per level, depth, retries, over budget, left out;
    # None where no LLM merged (concat, one prompt, a round checkpointed before issue 27)
    merge_tree: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public(self) -> dict[str, Any]:
        """The round as results.json and the `round` event show it."""
        return {k: v for k, v in self.to_dict().items() if k != "aggregate"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundSummary:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass
class RunState:
    """Everything a resumed run needs: the state after the last completed round."""

    round: int
    global_prompt: str
    starting_prompt: str
    zero_shot: dict[str, Scores]                         # "val" and "test"
    evaluation_engine_zero_shot_test: Scores | None      # None without run_larger_model
    best: BestPrompt
    history: list[RoundSummary] = field(default_factory=list)
    wall_seconds: float = 0.0   # until the last checkpoint, summed over the processes that ran it
    eval_judge_failures: int = 0
    llm: dict[str, int] = field(default_factory=dict)    # the run's LLM counters, phase by phase
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**data, "best": dataclasses.asdict(self.best), "history": [r.to_dict() for r in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        known = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        return cls(**{**known, "best": BestPrompt(**data["best"]),
                      "history": [RoundSummary.from_dict(r) for r in data["history"]]})


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Two sets of LLM counters summed key by key (keys of either)."""
    return {k: total.get(k, 0) + more.get(k, 0) for k in {**total, **more}}


def add_seconds(before: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    return {k: before.get(k, 0.0) + now.get(k, 0.0) for k in {**before, **now}}


def keep_best(state: RunState, summary: RoundSummary) -> None:
    """The round's aggregate is the next global prompt; it becomes the best prompt only if its mean
    validation accuracy is strictly higher (a tie keeps the earlier prompt)."""
    state.global_prompt = summary.aggregate
    if summary.val["mean"] > state.best.val:
        state.best = BestPrompt(summary.round, summary.val["mean"], summary.aggregate)
