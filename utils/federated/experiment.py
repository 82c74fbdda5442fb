"""What a run is: its clients, data and settings (Experiment), and how its prompts are scored (Evaluator)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from textgrad.engine import ChatEngine
from utils.privacy.outbound import OutboundPlan
from utils.tasks.evaluation import evaluate_on_tasks
from utils.tasks.registry import Example, TaskSpec, served_prompt

from .client import Engines, LocalSettings
from .screening import ScreenSettings

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
    # task name -> {"train", "val", "test"}: the split sizes used (small BBH subtasks shrink the paper's)
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    # Leak guard and simulated attackers (client side), screened aggregation (server side): issue 16.
    outbound: OutboundPlan = field(default_factory=OutboundPlan)
    screening: ScreenSettings = field(default_factory=ScreenSettings)


def starting_prompt(tasks: list[TaskSpec]) -> str:
    """The trained text every run starts from: instructions only, the same for every task."""
    return tasks[0].starting_prompt()


def served_prompts(prompt: str, tasks: list[TaskSpec]) -> dict[str, str]:
    """The trained text as each task's questions are answered with it."""
    return {task.name: served_prompt(prompt, task) for task in tasks}


def step_calls(exp: Experiment, clients: list[Client]) -> int:
    """The most LLM calls of one round of these clients' local steps: per step, forward, feedback and
    re-score of each example of the batch (no larger than the client's shard), one optimizer call."""
    batch = exp.settings.batch_size
    return exp.settings.max_steps * sum(3 * min(batch, len(c.examples)) + 1 for c in clients)


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
        self._memo: dict[tuple[str, int, str], tuple[dict[str, float], int]] = {}
        self._memo_lock = threading.Lock()

    @property
    def judge_failures(self) -> int:
        # A sum over the memo rather than a running counter: an evaluation finished in a phase that was
        # later retried stays remembered (its retry reuses it), so it stays counted, once.
        with self._memo_lock:
            return self._judge_failures_before + sum(failures for _, failures in self._memo.values())

    def __call__(self, prompt: str, sets: EvalSets, engine: ChatEngine | None = None) -> dict[str, float]:
        engine = engine or self.engines.test
        key = (prompt, id(sets), engine.name)  # sets are the experiment's own dicts, alive for the run
        with self._memo_lock:
            known = self._memo.get(key)
        if known is None:
            known = evaluate_on_tasks(prompt, sets, engine, max_tokens=self.exp.settings.answer_max_tokens,
                                      judge=self.engines.judge)
        with self._memo_lock:
            known = self._memo.setdefault(key, known)  # two threads racing on one key: the first one counts
        return dict(known[0])

    def pending_calls(self, prompt: str, sets: EvalSets, engine: ChatEngine | None = None) -> int:
        """LLM calls evaluating prompt on sets would make: 0 when remembered, else eval_calls."""
        engine = engine or self.engines.test
        with self._memo_lock:
            if (prompt, id(sets), engine.name) in self._memo:
                return 0
        return eval_calls(sets, judged=self.engines.judge is not None)


def eval_calls(sets: EvalSets, judged: bool) -> int:
    """An answer per example, plus a judge call per free-form answer with --judge llm."""
    return sum(len(examples) * (2 if judged and task.kind == "free_form" else 1) for task, examples in sets.values())
