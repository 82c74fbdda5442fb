"""How many LLM calls a run will make, per phase and engine, and how many tokens they carry.

No LLM is called. The run is played through symbolically: prompts are ids (only the starting prompt's
text is known in advance), batches and client choices are drawn with the run's own seeds, and every
request is keyed by what makes it unique (prompt, question, ...), so the free requests are found the
way the run finds them: the evaluator's memo per (prompt, split, engine), the response cache for a
request this run has already sent, and the on-disk cache for answers whose text is known beforehand.

What the model's replies decide cannot be known before the run. `Outcomes` holds those decisions; the
a-priori estimate assumes the costlier choice of each (every optimizer reply gives a usable prompt and
every new prompt is kept, so every step re-scores and every client returns a new prompt) and that the
best prompt is the last one (its test is shared with the final test; the cost of an earlier best is
reported apart). Given the outcomes a finished run recorded, the count is exact (tests/test_estimate.py).

The call structure lives in `_Planner`: one method per phase and per local step. A new kind of call
(e.g. screening candidate prompts) is one `_request` line where it happens; a new phase is one method
called from `_Planner.plan` or `_Planner._round`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textgrad import prompts as tg_prompts
from textgrad.optimizer import INSTRUCTIONS_REPLY
from textgrad.serving.window import message_overhead

from .aggregation import MERGE_SYSTEM, merge_request
from .client import OPTIMIZER_CONSTRAINTS, PROMPT_ROLE, LocalSettings, round_batches
from .evaluation import JUDGE_MAX_TOKENS, JUDGE_REPLY, JUDGE_SYSTEM, JUDGE_TEMPLATE
from .rounds import Client, Experiment, select_clients, starting_prompt
from .tasks import Example, TaskSpec, served_prompt

# Kinds of request. logprob: the UID measure of a prompt (a /completions request, not a chat call).
CHAT_KINDS = ("answer", "feedback", "optimizer", "merge", "judge")
LOGPROB = "logprob"
# Every request we send has a system and a user message.
CHAT_OVERHEAD = message_overhead([{"role": "system"}, {"role": "user"}])
# The verdict a wrong answer's feedback request carries (utils.client builds it); its tokens only.
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
class Outcomes:
    """The decisions the model's replies make. Steps are (client id, round, step) with step from 0."""

    unusable_steps: frozenset[tuple[str, int, int]] = frozenset()  # the optimizer reply gave no usable prompt
    reverted_steps: frozenset[tuple[str, int, int]] = frozenset()  # the new prompt scored lower and was dropped
    best_round: int | None = None  # round whose aggregate validated best (0: the starting prompt); None: the last
    # (round, client id or "global") -> the text a client returned / the aggregate. Two prompts of equal
    # text share their requests (a merge that returns one of its inputs, an edit that changes nothing).
    texts: dict[tuple[int, str], str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run_dir: Path) -> Outcomes:
        """The decisions a finished run recorded in events.jsonl, results.json and prompts/."""
        unusable, reverted = set(), set()
        for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("type") != "step":
                continue
            step = (event["client"], event["round"], event["step"])
            if event["new_batch_accuracy"] is None:
                unusable.add(step)
            elif not event["accepted"]:
                reverted.add(step)
        best = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["best"]["round"]
        texts = {}
        for path in (run_dir / "prompts").glob("round_*/*.txt"):
            name = path.stem.removeprefix("client_")
            texts[(int(path.parent.name.removeprefix("round_")), name)] = path.read_text(encoding="utf-8")[:-1]
        return cls(frozenset(unusable), frozenset(reverted), best, texts)


@dataclass(frozen=True)
class PlanSpec:
    """Everything the count depends on besides the outcomes."""

    experiment: Experiment
    test_engine: str
    evaluation_engine: str
    judge: bool                    # --judge llm: free-form answers are judged by the evaluation engine
    use_cache: bool                # a repeated request is answered from the response cache
    logprobs: bool                 # the test engine is asked for UID log-probabilities
    count_tokens: Callable[[str], int]
    completion: dict[str, float]   # expected completion tokens per call, by kind
    known_reply: Callable[[str, list[dict[str, str]], int], bool] = lambda engine, messages, max_tokens: False
    first_round: int = 1           # > 1 when resuming after a checkpoint
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


def planned_batches(client: Client, round_index: int, settings: LocalSettings) -> list[list[Example]]:
    """The batches client trains on in this round, drawn exactly as utils.client.train_client draws them
    (tests/test_estimate.py pins the two together)."""
    return round_batches(client.examples, settings, client.client_id, round_index)


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
        text = self.spec.first_prompt or starting_prompt(self.exp.tasks)
        start = self._new_prompt(self.count(text), text)
        self.start_tokens = start.tokens
        aggregates = {0: start}
        if self.spec.first_round == 1:
            self._zero_shot(start)
        global_prompt = start
        for round_index in range(self.spec.first_round, self.exp.rounds + 1):
            global_prompt = aggregates[round_index] = self._round(round_index, global_prompt)
        self._final_test(global_prompt, aggregates.get(self.outcomes.best_round, global_prompt))
        return CallPlan([Line(p, e, k, t) for (p, e, k), t in self.tallies.items()],
                        self._conditional(global_prompt))

    def _zero_shot(self, start: _Prompt) -> None:
        self._evaluate(ZERO_SHOT, start, "val", self.spec.test_engine)
        self._evaluate(ZERO_SHOT, start, "test", self.spec.test_engine)
        if self.exp.run_larger_model:
            self._evaluate(ZERO_SHOT, start, "test", self.spec.evaluation_engine)

    def _round(self, round_index: int, global_prompt: _Prompt) -> _Prompt:
        returned = self._local_steps(round_index, global_prompt)
        aggregate = self._merge(round_index, returned)
        self._evaluate(f"round {round_index} validation", aggregate, "val", self.spec.test_engine)
        if round_index == self.exp.rounds:  # the last aggregate's test overlaps its validation
            self._evaluate(FINAL_TEST, aggregate, "test", self.spec.test_engine)
        for prompt in [*returned, aggregate]:
            self._measure_uid(prompt)
        return aggregate

    def _final_test(self, last: _Prompt, best: _Prompt) -> None:
        for prompt in (last, best):
            self._evaluate(FINAL_TEST, prompt, "test", self.spec.test_engine)

    def _conditional(self, last: _Prompt) -> list[tuple[str, int, float]]:
        rounds_run = self.exp.rounds - self.spec.first_round + 1
        if self.outcomes.best_round is not None or rounds_run < 2:
            return []
        sets = self.exp.test_sets.values()
        calls = sum(len(examples) for _, examples in sets)
        tokens = sum(self._answer_request(self.spec.test_engine, last, task, ex, self.settings.answer_max_tokens)
                     .prompt_tokens + self.spec.completion["answer"] for task, examples in sets for ex in examples)
        return [("the best validation is an earlier round's prompt (its own final test)", calls, tokens)]

    # -- the server -----------------------------------------------------------------------

    def _local_steps(self, round_index: int, global_prompt: _Prompt) -> list[_Prompt]:
        by_id = {c.client_id: c for c in self.exp.clients}
        chosen = select_clients(list(by_id), self.exp.clients_per_round, self.settings.seed, round_index)
        phase = f"round {round_index} local steps"
        returned = []
        for client_id in chosen:  # disjoint shards: clients share no request, so their order does not matter
            prompt = global_prompt
            batches = planned_batches(by_id[client_id], round_index, self.settings)
            steps = [(client_id, round_index, step) for step in range(len(batches))]
            kept = [s for s in steps if s not in self.outcomes.unusable_steps | self.outcomes.reverted_steps]
            past: list[tuple[_Prompt, int]] = []  # --optimizer tgd_momentum: this round's earlier steps
            for step, batch in zip(steps, batches, strict=True):
                returned_text = self.outcomes.texts.get((round_index, client_id)) if kept and step == kept[-1] else None
                before = prompt
                prompt = self._local_step(phase, by_id[client_id], step, prompt, batch, returned_text, past)
                if self.settings.optimizer == "tgd_momentum":
                    past = (past + [(before, len(batch))])[-self.settings.momentum_window:]
            returned.append(prompt)
        return returned

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

    def _evaluate(self, phase: str, prompt: _Prompt, split: str, engine: str) -> None:
        memo = (prompt.id, split, engine)
        if memo in self.memo:  # utils.experiment.Evaluator remembers results per (prompt, sets, engine)
            return
        self.memo.add(memo)
        sets = self.exp.val_sets if split == "val" else self.exp.test_sets
        examples = [(task, ex) for task, items in sets.values() for ex in items]
        self._send(phase, [self._answer_request(engine, prompt, task, ex, self.settings.answer_max_tokens)
                           for task, ex in examples])
        self._judge_all(phase, prompt, examples)

    def _answer_all(self, phase: str, engine: str, prompt: _Prompt, batch: list[Example], task: TaskSpec,
                    max_tokens: int) -> None:
        self._send(phase, [self._answer_request(engine, prompt, task, ex, max_tokens) for ex in batch])
        self._judge_all(phase, prompt, [(task, ex) for ex in batch])

    def _judge_all(self, phase: str, prompt: _Prompt, examples: list[tuple[TaskSpec, Example]]) -> None:
        if self.spec.judge:
            self._send(phase, [self._judge_request(prompt, ex) for task, ex in examples if task.kind == "free_form"])

    def _measure_uid(self, prompt: _Prompt) -> None:
        # utils.prompt_stats measures each text once per process, whatever the response cache does.
        if not self.spec.logprobs or prompt.id in self.measured:
            return
        self.measured.add(prompt.id)
        self._count(UID_PHASE, _Request(self.spec.test_engine, LOGPROB, ("logprob", prompt.id), prompt.tokens, 1),
                    cached=False)

    # -- the requests ---------------------------------------------------------------------

    def _answer_request(self, engine: str, prompt: _Prompt, task: TaskSpec, ex: Example,
                        max_tokens: int) -> _Request:
        # Served as the trained text plus the task's format line (utils.tasks.served_prompt).
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
        earlier = set(self.seen)
        for request in requests:
            cached = self.spec.use_cache and (request.key in earlier or self._in_disk_cache(request))
            self._count(phase, request, cached)
            self.seen.add(request.key)

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
