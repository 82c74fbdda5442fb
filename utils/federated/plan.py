"""The plan of a run: the LLM calls it makes, as data, built once before its first call.

For each round it holds the clients chosen, each client's local steps with the batch each step trains
on, the screening, the merge and the validation; and the evaluations before the first round and after
the last. Three readers share it, so they cannot disagree about what a run does:
  the round loop (utils.federated.rounds) trains the plan's clients on the plan's batches;
  the progress bars (utils.reporting.progress) take each phase's total and the whole run's ETA from it;
  --estimate (utils.estimate) turns its calls into tokens, cache hits, time and money.

Calls are counted as the spec's method makes them. A local step of a batch of B examples makes 3B + 1:
B answers with the current prompt (forward), B feedbacks (backward), one optimizer call (TGD), and B
answers with the new prompt (re-score); with --judge llm each answer is judged too (one call more per
answer). An evaluation answers every example of its split. A merge of two or more different
prompts by summarization or sum_uid is one call when they fit one request; when they do not, it is a tree
of calls (utils.federated.merge_tree), foreseen from the experiment's merge limits for client prompts of
the starting prompt's size, a quarter longer per local step. concat makes none. A call the response cache
answers still counts: the bars count it as done, --estimate reports it as cached.

What the replies decide cannot be planned, so the counts are the a-priori ones, which --estimate assumes
too: every optimizer reply gives a usable prompt (each step re-scores); every client returns a prompt of
its own (each round merges, and validates a new aggregate); the best prompt is the last one (the final
test repeats the test the last round ran beside its validation, and costs nothing). A run whose replies
meet these assumptions makes exactly the plan's calls (tests/test_plan.py); a run whose replies do not
makes fewer, or more when an earlier round's prompt validates best (its own final test).

Each part of the plan also gives its calls by kind (`Calls`: answer, feedback, optimizer, merge, judge),
with the log-probability requests of the UID measures beside them (a round measures every returned prompt
and its aggregate; they are not LLM calls of the run, so `total` leaves them out). The progress estimate
prices what is left of the plan kind by kind (utils.reporting.eta.remaining_seconds).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

from utils.tasks.registry import Example

from .client import round_batches
from .experiment import Client, EvalSets, Experiment
from .screening import screening_sets

MERGE_METHODS = ("summarization", "sum_uid")  # the aggregation methods that ask an LLM


@dataclass(frozen=True)
class Calls:
    """Calls of one part of the plan, by kind."""

    answer: int = 0
    feedback: int = 0
    optimizer: int = 0
    merge: int = 0
    judge: int = 0
    logprob: int = 0  # UID measures: requests, not LLM calls of the run

    @property
    def total(self) -> int:
        """The LLM calls: every kind but the log-probability requests."""
        return self.answer + self.feedback + self.optimizer + self.merge + self.judge

    def by_kind(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __add__(self, other: Calls) -> Calls:
        return Calls(**{kind: n + getattr(other, kind) for kind, n in self.by_kind().items()})

    def times(self, factor: int) -> Calls:
        return Calls(**{kind: n * factor for kind, n in self.by_kind().items()})


@dataclass(frozen=True)
class Evaluation:
    """One prompt answered on every example of a split by one of the run's engines."""

    prompt: str   # "start", "aggregate" (of its round), "last" or "best"
    split: str    # "val" or "test"
    engine: str   # "test" or "evaluation": which of the run's engines answers
    kinds: Calls  # an answer per example, plus a judge call per answer with --judge llm

    @property
    def calls(self) -> int:
        return self.kinds.total


@dataclass(frozen=True)
class Step:
    """One local step of one client."""

    round: int
    client_id: str
    index: int                           # 0 .. max_steps - 1
    batch: tuple[Example, ...] | None    # None: the server does not hold this client's data (Flower)
    kinds: Calls

    @property
    def calls(self) -> int:
        return self.kinds.total


@dataclass(frozen=True)
class ClientRound:
    """A chosen client's part of a round: max_steps local steps from the round's global prompt."""

    client: Client
    steps: tuple[Step, ...]

    @property
    def batches(self) -> list[list[Example]]:
        if any(step.batch is None for step in self.steps):
            raise ValueError(f"the server does not hold the data of client {self.client.client_id}")
        return [list(step.batch) for step in self.steps]  # type: ignore[arg-type]


@dataclass(frozen=True)
class Round:
    index: int
    clients: tuple[ClientRound, ...]     # the chosen clients, in client order (the order merging sees)
    screening_sets: EvalSets | None      # the validation questions screening asks (--robust_aggregation screen)
    screening_kinds: Calls               # their answers (and judge calls), for every returned prompt
    merge_levels: tuple[int, ...]        # the merge's requests per level (utils.federated.merge_tree); () for none
    validation: Evaluation
    last_test: Evaluation | None         # the last round tests its aggregate beside validating it
    measures: int                        # UID measures: every returned prompt and the aggregate

    @property
    def screening(self) -> int:
        return self.screening_kinds.total

    @property
    def client_ids(self) -> list[str]:
        return [c.client.client_id for c in self.clients]

    @property
    def merge(self) -> int:
        """The merge's requests: 0 for concat or a single client, 1 when the prompts fit one request."""
        return sum(self.merge_levels)

    @property
    def step_calls(self) -> int:
        return sum(step.calls for c in self.clients for step in c.steps)

    def calls(self) -> int:
        return self.kinds().total

    def kinds(self) -> Calls:
        steps = [step.kinds for c in self.clients for step in c.steps]
        tests = [e.kinds for e in (self.validation, self.last_test) if e is not None]
        return sum([*steps, self.screening_kinds, *tests], Calls(merge=self.merge, logprob=self.measures))


@dataclass(frozen=True)
class RunPlan:
    zero_shot: tuple[Evaluation, ...]    # empty for a run resumed after a checkpoint
    rounds: tuple[Round, ...]            # the rounds still to run
    final_test: tuple[Evaluation, ...]   # the last and the best prompt
    judge: bool                          # answers are judged by the evaluation engine (--judge llm)

    @property
    def zero_shot_calls(self) -> int:
        return sum(e.calls for e in self.zero_shot)

    def calls(self) -> int:
        """Every call of the plan. The final test is free unless no round runs (a run resumed after its
        last round): the last round tested its aggregate, and the best prompt is assumed to be the last."""
        return self.kinds().total

    def kinds(self) -> Calls:
        """Every call of the plan by kind (see calls)."""
        final = [] if self.rounds else [self.final_test[0].kinds]
        return sum([*(e.kinds for e in self.zero_shot), *(r.kinds() for r in self.rounds), *final], Calls())

    def after(self, round_index: int) -> RunPlan:
        """The plan of the run resumed from the checkpoint of round round_index (0: the zero-shot one)."""
        return replace(self, zero_shot=(), rounds=tuple(r for r in self.rounds if r.index > round_index))


def select_clients(client_ids: list[str], per_round: int, seed: int, round_index: int) -> list[str]:
    """A seeded choice per round, returned in client order (the order aggregation sees)."""
    if per_round >= len(client_ids):
        return list(client_ids)
    chosen = set(random.Random(f"{seed}:select:{round_index}").sample(client_ids, per_round))
    return [c for c in client_ids if c in chosen]


def eval_calls(sets: EvalSets, judge: bool) -> Calls:
    """An answer per example, plus a judge call per answer with --judge llm."""
    answers = sum(len(examples) for _, examples in sets.values())
    return Calls(answer=answers, judge=answers if judge else 0)


def plan_run(exp: Experiment, judge: bool = False) -> RunPlan:
    """The whole run's plan, zero-shot to final test (RunPlan.after gives a resumed run's)."""
    zero_shot = [_evaluation(exp, judge, "start", "val"), _evaluation(exp, judge, "start", "test")]
    if exp.run_larger_model:
        zero_shot.append(_evaluation(exp, judge, "start", "test", engine="evaluation"))
    rounds = tuple(_plan_round(exp, judge, index) for index in range(1, exp.rounds + 1))
    final_test = (_evaluation(exp, judge, "last", "test"), _evaluation(exp, judge, "best", "test"))
    return RunPlan(tuple(zero_shot), rounds, final_test, judge)


def _evaluation(exp: Experiment, judge: bool, prompt: str, split: str, engine: str = "test") -> Evaluation:
    return Evaluation(prompt, split, engine, eval_calls(exp.val_sets if split == "val" else exp.test_sets, judge))


def _plan_round(exp: Experiment, judge: bool, index: int) -> Round:
    by_id = {c.client_id: c for c in exp.clients}
    chosen = select_clients(list(by_id), exp.clients_per_round, exp.settings.seed, index)
    clients = tuple(ClientRound(by_id[c], _plan_steps(exp, judge, by_id[c], index)) for c in chosen)
    sets = None
    if exp.screening.method == "screen":
        sets = screening_sets(exp.val_sets, exp.screening.size, exp.settings.seed, index)
    screening = eval_calls(sets, judge).times(len(chosen)) if sets is not None and len(chosen) > 1 else Calls()
    merge: tuple[int, ...] = ()
    if exp.aggregate_method in MERGE_METHODS and len(chosen) > 1:
        merge = tuple(exp.merge_limits.levels(len(chosen))) if exp.merge_limits is not None else (1,)
    last_test = _evaluation(exp, judge, "aggregate", "test") if index == exp.rounds else None
    # The returned prompts and the aggregate (a single client's prompt is the aggregate: measured once).
    measures = len(chosen) + (exp.aggregate_method is not None)
    return Round(index, clients, sets, screening, merge, _evaluation(exp, judge, "aggregate", "val"), last_test,
                 measures)


def _plan_steps(exp: Experiment, judge: bool, client: Client, round_index: int) -> tuple[Step, ...]:
    settings = exp.settings
    if not client.examples:  # a Flower server: the client's data is on its node, its batches are full
        batches: list[tuple[Example, ...] | None] = [None] * settings.max_steps
        sizes = [settings.batch_size] * settings.max_steps
    else:
        loaded = round_batches(client.examples, settings, client.client_id, round_index)
        batches, sizes = [tuple(b) for b in loaded], [len(b) for b in loaded]
    return tuple(Step(round_index, client.client_id, i, batch, step_calls(size, judge))
                 for i, (batch, size) in enumerate(zip(batches, sizes, strict=True)))


def step_calls(batch_size: int, judged: bool) -> Calls:
    """One local step: forward, feedback and re-score of each example, and the optimizer call; the
    forward and re-score answers judged with --judge llm."""
    return Calls(answer=2 * batch_size, feedback=batch_size, optimizer=1, judge=2 * batch_size if judged else 0)
