"""The requests of a run's plan, per phase and engine: which are sent, which the cache answers, and how
many tokens they carry.

No LLM is called. The run's plan (utils.federated.plan: the clients of each round, their batches, the
evaluations) is played through symbolically: prompts are ids (only the starting prompt's text is known
in advance), and every request is keyed by what makes it unique (prompt, question, ...), so the free
requests are found the way the run finds them: the evaluator's memo per (prompt, split, engine), the
response cache for a request this run has already sent, and the on-disk cache for answers whose text
is known beforehand. Sent and cached requests together are the plan's calls.

What the model's replies decide cannot be known before the run. `Outcomes` holds those decisions; the
a-priori estimate assumes the costlier choice of each (every optimizer reply gives a usable prompt and
every new prompt is kept, so every step re-scores and every client returns a new prompt) and that the
best prompt is the last one (its test is shared with the final test; the cost of an earlier best is
reported apart). Given the outcomes a finished run recorded, the count is exact (tests/test_estimate.py).

The requests of each call of the plan are written in `_Planner`: one method per phase and per local
step. A new kind of call is a line in the plan (utils.federated.plan) and a `_request` where it happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from textgrad import prompts as tg_prompts
from textgrad.optimizer import INSTRUCTIONS_REPLY
from textgrad.serving.window import message_overhead
from utils.federated.aggregation import MERGE_SYSTEM, merge_request
from utils.federated.client import OPTIMIZER_CONSTRAINTS, PROMPT_ROLE
from utils.federated.experiment import Client, EvalSets, Experiment, starting_prompt
from utils.federated.plan import ClientRound, Evaluation, Round, RunPlan
from utils.tasks.evaluation import JUDGE_MAX_TOKENS, JUDGE_REPLY, JUDGE_SYSTEM, JUDGE_TEMPLATE
from utils.tasks.registry import Example, TaskSpec, served_prompt

from .outcomes import Outcomes

# Kinds of request. logprob: the UID measure of a prompt (a /completions request, not a chat call).
CHAT_KINDS = ("answer", "feedback", "optimizer", "merge", "judge")
LOGPROB = "logprob"
# Every request we send has a system and a user message.
CHAT_OVERHEAD = message_overhead([{"role": "system"}, {"role": "user"}])
# The verdict a wrong answer's feedback request carries (utils.federated.client builds it); its tokens only.
VERDICT = "Checking the final answer against the reference: incorrect; the expected final answer is "
ZERO_SHOT, FINAL_TEST, UID_PHASE = "zero-shot", "final test", "UID measures"


@dataclass
class Tally:
    """Calls and tokens of one phase on one engine (or a total)."""

    calls: int = 0   # requests the run would send
    cached: int = 0  # requests answered from the cache (an earlier run's, or this run's own repeats): free
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0

    def add(self, other: Tally) -> None:
        self.calls += other.calls
        self.cached += other.cached
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Line:
    phase: str
    engine: str
    kind: str
    tally: Tally


@dataclass(frozen=True)
class PlanSpec:
    """Everything the count depends on besides the outcomes."""

    experiment: Experiment
    plan: RunPlan                  # the run's plan; a resumed run's starts after its checkpoint (RunPlan.after)
    test_engine: str
    evaluation_engine: str
    use_cache: bool                # a repeated request is answered from the response cache
    logprobs: bool                 # the test engine is asked for UID log-probabilities
    count_tokens: Callable[[str], int]
    completion: dict[str, float]   # expected completion tokens per call, by kind
    known_reply: Callable[[str, list[dict[str, str]], int], bool] = lambda engine, messages, max_tokens: False
    first_prompt: str | None = None  # the global prompt the run starts (or resumes) from
    structured: bool = True        # optimizer, merge and judge requests ask for a JSON reply (textgrad.structured)


@dataclass
class CallPlan:
    lines: list[Line]
    # (what would happen, extra calls, extra tokens) for the costlier branches the plan did not assume
    conditional: list[tuple[str, int, float]] = field(default_factory=list)

    def by_phase(self, kinds: Iterable[str] = CHAT_KINDS) -> dict[str, dict[str, Tally]]:
        phases: dict[str, dict[str, Tally]] = {}
        for line in self.lines:
            if line.kind in kinds:
                phases.setdefault(line.phase, {}).setdefault(line.engine, Tally()).add(line.tally)
        return phases

    def totals(self, kinds: Iterable[str] = CHAT_KINDS) -> dict[str, Tally]:
        totals: dict[str, Tally] = {}
        for line in self.lines:
            if line.kind in kinds:
                totals.setdefault(line.engine, Tally()).add(line.tally)
        return totals

    def calls(self, kinds: Iterable[str] = CHAT_KINDS) -> int:
        return sum(t.calls for t in self.totals(kinds).values())


@dataclass(frozen=True)
class _Prompt:
    id: int
    tokens: int
    text: str | None  # known only for the prompt the run starts from


@dataclass(frozen=True)
class _Request:
    engine: str
    kind: str
    key: tuple[Any, ...]
    prompt_tokens: float
    max_tokens: int
    messages: list[dict[str, str]] | None = None  # the exact request, when it is known before the run


class _Planner:
    def __init__(self, spec: PlanSpec, outcomes: Outcomes) -> None:
        self.spec, self.outcomes = spec, outcomes
        self.exp = spec.experiment
        self.settings = self.exp.settings
        self.tallies: dict[tuple[str, str, str], Tally] = {}
        self.seen: set[tuple[Any, ...]] = set()
        self.memo: set[tuple[int, str, str]] = set()
        self.derived: dict[tuple[Any, ...], _Prompt] = {}  # request key -> the prompt its reply yields
        self.measured: set[int] = set()
        self.by_text: dict[str, _Prompt] = {}  # prompts whose text is known (the start, a finished run's)
        self.next_id = 0
        self.start_tokens = 0  # the starting prompt's: an edit is assumed to add a quarter of it
        self._count_cache: dict[str, int] = {}

    # -- the run --------------------------------------------------------------------------

    def plan(self) -> CallPlan:
        run = self.spec.plan
        text = self.spec.first_prompt or starting_prompt(self.exp.tasks)
        start = self._new_prompt(self.count(text), text)
        self.start_tokens = start.tokens
        aggregates = {0: start}
        for evaluation in run.zero_shot:
            self._evaluate(ZERO_SHOT, start, evaluation)
        global_prompt = start
        for planned in run.rounds:
            global_prompt = aggregates[planned.index] = self._round(planned, global_prompt)
        best = aggregates.get(self.outcomes.best_round, global_prompt)
        for evaluation in run.final_test:
            self._evaluate(FINAL_TEST, best if evaluation.prompt == "best" else global_prompt, evaluation)
        return CallPlan([Line(p, e, k, t) for (p, e, k), t in self.tallies.items()],
                        self._conditional(global_prompt))

    def _round(self, planned: Round, global_prompt: _Prompt) -> _Prompt:
        returned = [self._client_round(planned.index, client, global_prompt) for client in planned.clients]
        if planned.screening_sets is not None:
            self._screen(planned, returned)
        aggregate = self._merge(planned.index, returned)
        self._evaluate(f"round {planned.index} validation", aggregate, planned.validation)
        if planned.last_test is not None:  # the last aggregate's test overlaps its validation
            self._evaluate(FINAL_TEST, aggregate, planned.last_test)
        for prompt in [*returned, aggregate]:
            self._measure_uid(prompt)
        return aggregate

    def _conditional(self, last: _Prompt) -> list[tuple[str, int, float]]:
        if self.outcomes.best_round is not None or len(self.spec.plan.rounds) < 2:
            return []
        sets = self.exp.test_sets.values()
        calls = sum(len(examples) for _, examples in sets)
        tokens = sum(self._answer_request(self.spec.test_engine, last, task, ex, self.settings.answer_max_tokens)
                     .prompt_tokens + self.spec.completion["answer"] for task, examples in sets for ex in examples)
        return [("the best validation is an earlier round's prompt (its own final test)", calls, tokens)]

    # -- the server -----------------------------------------------------------------------

    def _client_round(self, round_index: int, planned: ClientRound, global_prompt: _Prompt) -> _Prompt:
        """The prompt a chosen client returns. Clients hold disjoint shards and share no request, so their
        order does not matter."""
        client_id, prompt = planned.client.client_id, global_prompt
        steps = [(client_id, round_index, step.index) for step in planned.steps]
        kept = [s for s in steps if s not in self.outcomes.unusable_steps | self.outcomes.reverted_steps]
        past: list[tuple[_Prompt, int]] = []  # --optimizer tgd_momentum: this round's earlier steps
        for key, batch in zip(steps, planned.batches, strict=True):
            returned_text = self.outcomes.texts.get((round_index, client_id)) if kept and key == kept[-1] else None
            before = prompt
            prompt = self._local_step(f"round {round_index} local steps", planned.client, key, prompt, batch,
                                      returned_text, past)
            if self.settings.optimizer == "tgd_momentum":
                past = (past + [(before, len(batch))])[-self.settings.momentum_window:]
        return prompt

    def _screen(self, planned: Round, returned: list[_Prompt]) -> None:
        """Every distinct returned prompt answers the round's screening questions (when two or more differ)."""
        distinct = list({p.id: p for p in returned}.values())
        if len(distinct) < 2:
            return
        for prompt in distinct:
            self._answer_sets(f"round {planned.index} screening", prompt, planned.screening_sets or {},
                              self.spec.test_engine)

    def _merge(self, round_index: int, returned: list[_Prompt]) -> _Prompt:
        distinct = list({p.id: p for p in returned}.values())
        method = self.exp.aggregate_method
        if method is None or len(distinct) == 1:  # nothing to merge: the prompt itself goes on
            return returned[0] if method is None else distinct[0]
        key = (method, tuple(p.id for p in distinct))
        text = self.outcomes.texts.get((round_index, "global"))
        if method == "concat":
            return self._derive(key, sum(p.tokens for p in distinct), text)
        self._send(f"round {round_index} merge", [self._merge_request(key, distinct)])
        return self._derive(key, min(max(p.tokens for p in distinct), self.exp.merge_max_tokens), text)

    # -- a client's local step: forward, feedback, optimizer, re-score --------------------

    def _local_step(self, phase: str, client: Client, step: tuple[str, int, int], prompt: _Prompt,
                    batch: list[Example], returned_text: str | None = None,
                    past: list[tuple[_Prompt, int]] | None = None) -> _Prompt:
        spec = self.spec
        self._answer_all(phase, spec.test_engine, prompt, batch, client.task, self.settings.answer_max_tokens)
        self._send(phase, [self._feedback_request(prompt, ex) for ex in batch])
        optimizer = self._optimizer_request(client.task, prompt, batch, past or [])
        self._send(phase, [optimizer])
        if step in self.outcomes.unusable_steps:
            return prompt
        new = self._derive(optimizer.key, min(prompt.tokens + self.start_tokens // 4,
                                              self.settings.optimizer_max_tokens), returned_text)
        self._answer_all(phase, spec.test_engine, new, batch, client.task, self.settings.answer_max_tokens)
        return prompt if step in self.outcomes.reverted_steps else new

    # -- evaluations ----------------------------------------------------------------------

    def _evaluate(self, phase: str, prompt: _Prompt, evaluation: Evaluation) -> None:
        engine = self.spec.evaluation_engine if evaluation.engine == "evaluation" else self.spec.test_engine
        memo = (prompt.id, evaluation.split, engine)
        if memo in self.memo:  # utils.federated.experiment.Evaluator remembers results per (prompt, split, engine)
            return
        self.memo.add(memo)
        self._answer_sets(phase, prompt, self.exp.val_sets if evaluation.split == "val" else self.exp.test_sets,
                          engine)

    def _answer_sets(self, phase: str, prompt: _Prompt, sets: EvalSets, engine: str) -> None:
        examples = [(task, ex) for task, items in sets.values() for ex in items]
        self._send(phase, [self._answer_request(engine, prompt, task, ex, self.settings.answer_max_tokens)
                           for task, ex in examples])
        self._judge_all(phase, prompt, examples)

    def _answer_all(self, phase: str, engine: str, prompt: _Prompt, batch: list[Example], task: TaskSpec,
                    max_tokens: int) -> None:
        self._send(phase, [self._answer_request(engine, prompt, task, ex, max_tokens) for ex in batch])
        self._judge_all(phase, prompt, [(task, ex) for ex in batch])

    def _judge_all(self, phase: str, prompt: _Prompt, examples: list[tuple[TaskSpec, Example]]) -> None:
        if self.spec.plan.judge:
            self._send(phase, [self._judge_request(prompt, ex) for task, ex in examples if task.kind == "free_form"])

    def _measure_uid(self, prompt: _Prompt) -> None:
        # utils.reporting.prompt_stats measures each text once per process, whatever the response cache does.
        if not self.spec.logprobs or prompt.id in self.measured:
            return
        self.measured.add(prompt.id)
        self._count(UID_PHASE, _Request(self.spec.test_engine, LOGPROB, ("logprob", prompt.id), prompt.tokens, 1),
                    cached=False)

    # -- the requests ---------------------------------------------------------------------

    def _answer_request(self, engine: str, prompt: _Prompt, task: TaskSpec, ex: Example,
                        max_tokens: int) -> _Request:
        # Served as the trained text plus the task's format line (utils.tasks.registry.served_prompt).
        messages = None
        if prompt.text is not None:
            messages = [{"role": "system", "content": served_prompt(prompt.text, task)},
                        {"role": "user", "content": ex.question}]
        size = prompt.tokens + self.count(task.format_instruction) + self.count(ex.question) + CHAT_OVERHEAD
        return _Request(engine, "answer", ("answer", engine, prompt.id, ex.question, max_tokens), size, max_tokens,
                        messages)

    def _feedback_request(self, prompt: _Prompt, ex: Example) -> _Request:
        fixed = self.fixed(tg_prompts.FEEDBACK_SYSTEM, tg_prompts.FEEDBACK_TEMPLATE.format(
            role=PROMPT_ROLE, variable="", input="", output="", judgement=""))
        size = (fixed + prompt.tokens + self.count(ex.question) + self.spec.completion["answer"]
                + self.count(VERDICT + ex.target))
        return _Request(self.spec.evaluation_engine, "feedback", ("feedback", prompt.id, ex.question), size,
                        self.settings.feedback_max_tokens)

    def _optimizer_request(self, task: TaskSpec, prompt: _Prompt, batch: list[Example],
                           past: list[tuple[_Prompt, int]]) -> _Request:
        """TGD's request; with past steps (tgd_momentum) also their prompts and feedback in front of it."""
        constraints = tg_prompts.CONSTRAINTS_HEADER + "\n".join(f"- {c}" for c in OPTIMIZER_CONSTRAINTS) + "\n"
        template = tg_prompts.MOMENTUM_TEMPLATE if past else tg_prompts.OPTIMIZER_TEMPLATE
        fixed = self.fixed(tg_prompts.OPTIMIZER_SYSTEM, template.format(
            role=PROMPT_ROLE, value="", feedback="", constraints=constraints, history="",
            reply_format=INSTRUCTIONS_REPLY.instruction(self.spec.structured)))
        feedback = self.spec.completion["feedback"] + 1
        step_label = self.count(tg_prompts.MOMENTUM_STEP.format(number=1, age="1 step", value="", feedback=""))
        size = (fixed + prompt.tokens + len(batch) * feedback
                + sum(step_label + earlier.tokens + examples * feedback for earlier, examples in past))
        key = ("optimizer", prompt.id, tuple(ex.question for ex in batch)) + tuple(earlier.id for earlier, _ in past)
        return _Request(self.spec.evaluation_engine, "optimizer", key, size, self.settings.optimizer_max_tokens)

    def _merge_request(self, key: tuple[Any, ...], distinct: list[_Prompt]) -> _Request:
        # The request as written around empty client prompts: their own tokens are added to it.
        fixed = self.fixed(MERGE_SYSTEM, merge_request([""] * len(distinct), self.exp.tasks,
                                                       self.exp.aggregate_method == "sum_uid", self.spec.structured))
        size = fixed + sum(p.tokens for p in distinct)
        return _Request(self.spec.evaluation_engine, "merge", key, size, self.exp.merge_max_tokens)

    def _judge_request(self, prompt: _Prompt, ex: Example) -> _Request:
        fixed = self.fixed(JUDGE_SYSTEM, JUDGE_TEMPLATE.format(target="", response="",
                                                               reply_format=JUDGE_REPLY.instruction(self.spec.structured)))
        answer = min(self.spec.completion["answer"], 16)  # the judge sees the final answer only
        return _Request(self.spec.evaluation_engine, "judge", ("judge", prompt.id, ex.question),
                        fixed + self.count(ex.target) + answer, JUDGE_MAX_TOKENS)

    # -- bookkeeping ----------------------------------------------------------------------

    def _send(self, phase: str, requests: list[_Request]) -> None:
        """Requests sent together (concurrently): one is free if an earlier one had its key, not if a
        sibling does (both are in flight before either reply reaches the cache)."""
        for request in requests:
            cached = self.spec.use_cache and (request.key in self.seen or self._in_disk_cache(request))
            self._count(phase, request, cached)
        self.seen.update(request.key for request in requests)

    def _in_disk_cache(self, request: _Request) -> bool:
        return request.messages is not None and self.spec.known_reply(request.engine, request.messages,
                                                                      request.max_tokens)

    def _count(self, phase: str, request: _Request, cached: bool) -> None:
        tally = self.tallies.setdefault((phase, request.engine, request.kind), Tally())
        if cached:
            tally.cached += 1
            return
        tally.calls += 1
        tally.prompt_tokens += request.prompt_tokens
        tally.completion_tokens += 1 if request.kind == LOGPROB else self.spec.completion[request.kind]

    def _new_prompt(self, tokens: int, text: str | None = None) -> _Prompt:
        self.next_id += 1
        prompt = _Prompt(self.next_id, tokens, text)
        if text is not None:
            self.by_text.setdefault(text, prompt)
        return prompt

    def _derive(self, key: tuple[Any, ...], tokens: int, observed: str | None = None) -> _Prompt:
        """The prompt a reply yields: the same request gives the same reply (temperature 0, the cache).
        A text observed in a finished run that an earlier prompt already had is that prompt."""
        if key not in self.derived:
            known = self.by_text.get(observed) if observed is not None else None
            self.derived[key] = known or self._new_prompt(tokens)
            if observed is not None:
                self.by_text.setdefault(observed, self.derived[key])
        return self.derived[key]

    def count(self, text: str) -> int:
        if text not in self._count_cache:
            self._count_cache[text] = self.spec.count_tokens(text)
        return self._count_cache[text]

    def fixed(self, system: str, user: str) -> int:
        """Tokens of a request's fixed parts: its system message, its template without the fields."""
        return self.count(system) + self.count(user) + CHAT_OVERHEAD


def plan_calls(spec: PlanSpec, outcomes: Outcomes | None = None) -> CallPlan:
    """The calls and tokens of the run `spec` describes, under `outcomes` (default: the a-priori assumptions)."""
    return _Planner(spec, outcomes or Outcomes()).plan()
