"""What a run is: its clients, data and settings (Experiment), and how its prompts are scored (Evaluator)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from textgrad.engine import ChatEngine
from utils.privacy.outbound import OutboundPlan
from utils.tasks.evaluation import evaluate_on_tasks
from utils.tasks.registry import Example, TaskSpec, served_prompt

from .client import Engines, LocalSettings
from .merge_tree import MergeLimits
from .screening import ScreenSettings

if TYPE_CHECKING:  # the plan is built from an Experiment
    from .plan import Evaluation

EvalSets = dict[str, tuple[TaskSpec, list[Example]]]


@dataclass
class Client:
    client_id: str
    task: TaskSpec
    examples: list[Example]


@dataclass
class Experiment:
    module: str
    tasks: list[TaskSpec]
    clients: list[Client]
    val_sets: EvalSets
    test_sets: EvalSets
    aggregate_method: str | None  # None: a single client whose prompt is the global prompt
    rounds: int
    clients_per_round: int
    settings: LocalSettings
    merge_max_tokens: int = 768
    run_larger_model: bool = True
    initial_prompt: str | None = None  # --initial_prompt; None: ours (TaskSpec.starting_prompt)
    # task name -> {"train", "val", "test"}: the split sizes used (small BBH subtasks shrink the paper's)
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    # Leak guard and simulated attackers (client side), screened aggregation (server side).
    outbound: OutboundPlan = field(default_factory=OutboundPlan)
    screening: ScreenSettings = field(default_factory=ScreenSettings)
    # The budget of a merged prompt and what one merge request holds, set once the engines' windows are known
    # (utils.federated.runner); None: merges derive them from the evaluation engine's window (issue 27).
    merge_limits: MergeLimits | None = None


def starting_prompt(tasks: list[TaskSpec], initial_prompt: str | None = None) -> str:
    """The trained text every client starts from: instructions only (--initial_prompt, else ours, the same
    for every task)."""
    return initial_prompt or tasks[0].starting_prompt()


def served_prompts(prompt: str, tasks: list[TaskSpec]) -> dict[str, str]:
    """The trained text as each task's questions are answered with it."""
    return {task.name: served_prompt(prompt, task) for task in tasks}


class Evaluator:
    """Accuracy of a prompt on validation or test sets; counts the LLM judge's unusable replies.

    Results are remembered per (prompt, sets, engine) for the run, so a prompt evaluated twice (the
    best prompt is often the last one or the starting one) costs its calls once and counts its judge
    failures once: they are counted when an evaluation is first remembered, never on a repeat.
    judge_failures starts from the count of the evaluations before a resume (from the checkpoint).
    """

    def __init__(self, exp: Experiment, engines: Engines, judge_failures: int = 0) -> None:
        self.exp, self.engines = exp, engines
        self._judge_failures_before = judge_failures
        self._memo: dict[tuple[str, str, str], tuple[dict[str, float], int]] = {}
        self._memo_lock = threading.Lock()

    @property
    def judge_failures(self) -> int:
        # A sum over the memo rather than a running counter: an evaluation finished in a phase that was
        # later retried stays remembered (its retry reuses it), so it stays counted, once.
        with self._memo_lock:
            return self._judge_failures_before + sum(failures for _, failures in self._memo.values())

    def __call__(self, prompt: str, evaluation: Evaluation) -> dict[str, float]:
        """The accuracy per task (and their mean) of prompt in a planned evaluation (its split and engine)."""
        key = self._key(prompt, evaluation)
        with self._memo_lock:
            known = self._memo.get(key)
        if known is None:
            sets = self.exp.val_sets if evaluation.split == "val" else self.exp.test_sets
            known = evaluate_on_tasks(prompt, sets, self._engine(evaluation),
                                      max_tokens=self.exp.settings.answer_max_tokens, judge=self.engines.judge)
        with self._memo_lock:
            known = self._memo.setdefault(key, known)  # two threads racing on one key: the first one counts
        return dict(known[0])

    def pending_calls(self, prompt: str, evaluation: Evaluation | None) -> int:
        """The calls of the planned evaluation of prompt, 0 if it was evaluated before (or there is none)."""
        if evaluation is None:
            return 0
        with self._memo_lock:
            return 0 if self._key(prompt, evaluation) in self._memo else evaluation.calls

    def _engine(self, evaluation: Evaluation) -> ChatEngine:
        return self.engines.evaluation if evaluation.engine == "evaluation" else self.engines.test

    def _key(self, prompt: str, evaluation: Evaluation) -> tuple[str, str, str]:
        return prompt, evaluation.split, self._engine(evaluation).name
