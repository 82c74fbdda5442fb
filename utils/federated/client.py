"""The client side: local steps of textual gradient descent on a client's own examples.

Everything a client sends back is a plain record (ClientUpdate) holding prompts and metrics only,
never examples, so the same code serves in-process simulation and Flower across machines.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import textgrad as tg
from textgrad.engine import ChatEngine
from textgrad.errors import ContextOverflowError
from textgrad.optimizer import INSTRUCTIONS_REPLY, MomentumHistory, TGDMomentum
from textgrad.parallel import run_concurrently
from textgrad.serving.slots import EndpointSlots
from utils.privacy.attacks import poisoned_prompt
from utils.privacy.leakage import LeakAudit, guard_prompt, redact_copies
from utils.privacy.outbound import ClientPolicy, OutboundPlan
from utils.tasks.evaluation import evaluate_prompt, score_answer
from utils.tasks.registry import Example, TaskSpec, served_prompt

from .degenerate import DEGENERATE, RequestTexts, degenerate_reason

if TYPE_CHECKING:  # the plan is built from clients: it imports this module
    from .plan import ClientRound, Round

PROMPT_ROLE = "system prompt that steers the model's answers to the task's questions"
SERVED_ROLE = "system prompt the model answered with (the trained text plus the task's answer-format line)"
# The format line is appended by the program when serving (utils.tasks.registry.served_prompt), never trained.
OPTIMIZER_CONSTRAINTS = ("Leave out how the final answer line is written: the program adds that line itself.",
                         "Do not include any specific question or its answer.")


@dataclass(frozen=True)
class LocalSettings:
    """Round settings the server sends to every client."""

    max_steps: int = 3
    batch_size: int = 3
    proximal_update: bool = False
    seed: int = 42
    answer_max_tokens: int = 512
    feedback_max_tokens: int = 256
    optimizer_max_tokens: int = 512
    optimizer: str = "tgd"  # "tgd_momentum": TGD that also sees the round's earlier steps (textgrad.optimizer.momentum)
    momentum_window: int = 3


@dataclass
class Engines:
    test: ChatEngine        # answers the questions: the model whose prompt is trained
    evaluation: ChatEngine  # answers too (its own zero-shot test); writes feedback, new prompts and merges
    judge: ChatEngine | None = None  # set with --judge llm
    # The evaluation engine in its writing roles, each sampling its own way (utils.federated.sampling);
    # None: the evaluation engine as it is.
    feedback: ChatEngine | None = None
    optimizer: ChatEngine | None = None
    merge: ChatEngine | None = None

    def writer(self, role: str) -> ChatEngine:
        """The evaluation engine as one of its writing roles (feedback, optimizer, merge) uses it."""
        return getattr(self, role) or self.evaluation

    def by_role(self) -> dict[str, ChatEngine]:
        """Every role the run has, and the engine (view) that plays it."""
        roles = {"answer": self.test, **{role: self.writer(role) for role in ("feedback", "optimizer", "merge")}}
        return {**roles, "judge": self.judge} if self.judge is not None else roles

    def endpoint_slots(self) -> list[EndpointSlots]:
        """The caps of the run's endpoints: answers go to the test engine's, feedback to the evaluation
        engine's (often one and the same); test doubles have none."""
        caps = (getattr(engine, "request_slot", lambda: None)() for engine in (self.test, self.evaluation))
        return list({id(slots): slots for slots in caps if slots is not None}.values())


@dataclass
class StepResult:
    step: int
    batch_accuracy: float
    new_batch_accuracy: float | None  # None when no new prompt was produced
    accepted: bool
    # Why the optimizer gave no usable prompt: "no_tags" | "unparseable_json" | "empty" | "truncated" (cut at
    # its token limit) | "degenerate" (junk: utils.federated.degenerate) | "context_overflow" (the step's
    # requests could not fit the window, so it was skipped) | None
    format_failure: str | None
    judge_format_failures: int = 0


@dataclass
class ClientUpdate:
    client_id: str
    round: int
    start_prompt: str
    prompt: str
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None  # set when the client failed; the server aggregates the others
    leakage: LeakAudit | None = None  # set by release_update as the update leaves the client

    @property
    def train_accuracy(self) -> float | None:
        """Mean batch accuracy of the prompt each step started from, on that step's local training batch
        (batches are drawn without repeats within an epoch of the shard, so early rounds mostly see
        examples the prompt was not yet trained on; later epochs revisit them). Steps skipped for the
        context window measured nothing and are left out; None when every step was skipped."""
        measured = [s.batch_accuracy for s in self.steps if s.format_failure != "context_overflow"]
        return sum(measured) / len(measured) if measured else None

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because their requests could not fit the context window."""
        return sum(s.format_failure == "context_overflow" for s in self.steps)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> ClientUpdate:
        steps = [StepResult(**s) for s in record.get("steps", [])]
        leakage = LeakAudit(**record["leakage"]) if record.get("leakage") else None
        return cls(**{**record, "steps": steps, "leakage": leakage})


def keep_new_prompt(old_accuracy: float, new_accuracy: float, proximal: bool) -> bool:
    """Default rule: not worse. Proximal rule: strictly better, or a perfect batch."""
    if proximal:
        return new_accuracy > old_accuracy or new_accuracy == 1.0
    return new_accuracy >= old_accuracy


def served_variable(prompt: tg.Variable, task: TaskSpec) -> tg.Variable:
    """The system prompt as the model sees it, in the graph between the answers and the trained text: the
    feedback reviews what the model really got, and reaches the trained text unchanged."""
    served = tg.Variable(served_prompt(prompt.value, task), SERVED_ROLE, requires_grad=True, predecessors=[prompt])
    served.backward_fn = lambda engine: [(prompt, g) for g in served.gradients]
    return served


def make_optimizer(prompt: tg.Variable, engine: ChatEngine, settings: LocalSettings,
                   history: MomentumHistory | None) -> tg.TGD:
    """The step's optimizer, --optimizer: tgd, or tgd_momentum on the round's history of this client."""
    options = {"engine": engine, "max_tokens": settings.optimizer_max_tokens,
               "constraints": list(OPTIMIZER_CONSTRAINTS)}
    if settings.optimizer == "tgd_momentum":
        optimizer: tg.TGD = TGDMomentum([prompt], momentum_window=settings.momentum_window, history=history,
                                        **options)
    else:
        optimizer = tg.TGD([prompt], **options)
    optimizer.reply = INSTRUCTIONS_REPLY
    return optimizer


def local_step(prompt_text: str, batch: list[Example], task: TaskSpec, engines: Engines,
               settings: LocalSettings, step: int = 0,
               history: MomentumHistory | None = None) -> tuple[str, StepResult]:
    """Forward, score, backward, TGD, re-score; returns the prompt to continue from and what happened.

    prompt_text is the trained text; every answer request is served with the task's format line.
    history: the earlier steps of this round, for --optimizer tgd_momentum (which records this one)."""
    prompt = tg.Variable(prompt_text, PROMPT_ROLE, requires_grad=True)
    model = tg.BlackboxLLM(engines.test, system_prompt=served_variable(prompt, task),
                           max_tokens=settings.answer_max_tokens, feedback_max_tokens=settings.feedback_max_tokens)
    questions = [tg.Variable(ex.question, "question the model answers", requires_grad=False) for ex in batch]
    try:
        responses = run_concurrently([lambda q=q: model(q) for q in questions])
    except ContextOverflowError:  # an answer that cannot fit: no batch to learn from, skip the step
        return prompt_text, StepResult(step, 0.0, None, False, "context_overflow")

    judge_failures = 0
    losses = []
    correct = []
    for ex, response in zip(batch, responses, strict=True):
        score, judge_failed = score_answer(task, response.value, ex.target, engines.judge, question=ex.question)
        judge_failures += judge_failed
        correct.append(score)
        target = tg.Variable(ex.target, "correct answer", requires_grad=False)
        verdict = "correct" if score else f"incorrect; the expected final answer is {ex.target}"
        losses.append(tg.StringBasedFunction(lambda response, target, v=verdict: v,
                                             "Checking the final answer against the reference")(
            {"response": response, "target": target}, response_role_description="correctness of the response"))
    accuracy = sum(correct) / len(correct)

    tg.sum(losses).backward(engines.writer("feedback"))
    optimizer = make_optimizer(prompt, engines.writer("optimizer"), settings, history)
    if not prompt.gradients and model.feedback_skipped:
        return prompt_text, StepResult(step, accuracy, None, False, "context_overflow", judge_failures)
    optimizer.step()

    def result(new_accuracy: float | None, accepted: bool, failure: str | None, judged: int = 0) -> StepResult:
        return StepResult(step, accuracy, new_accuracy, accepted, failure, judge_failures + judged)

    if not optimizer.updated[0]:
        return prompt_text, result(None, False, optimizer.failures[0])
    # Parsed, yet junk (an answer, a copied question, pieces of the request): rejected like a format failure.
    request = RequestTexts(ours=optimizer.request_texts[0], edited=(prompt_text,))
    if degenerate_reason(prompt.value, batch, request=request) is not None:
        return prompt_text, result(None, False, DEGENERATE)
    rescored = evaluate_prompt(prompt.value, batch, task, engines.test, max_tokens=settings.answer_max_tokens,
                               judge=engines.judge)
    accepted = keep_new_prompt(accuracy, rescored.accuracy, settings.proximal_update)
    new_prompt = prompt.value if accepted else prompt_text
    return new_prompt, result(rescored.accuracy, accepted, None, rescored.judge_format_failures)


def batch_indices(shard_size: int, batch_size: int, epoch_seed: str, global_step: int) -> list[int]:
    """Indices of the batch for a client's global_step'th local step (0-based, over the whole run).

    A data loader with shuffling and drop_last=False: each epoch is a fresh seeded permutation of the
    shard cut into consecutive batches, the last one short when batch_size does not divide the shard
    (batch_size >= shard size: every batch is the whole shard). Every example is used once per epoch
    before any repeats. A pure function of its arguments, so batches do not depend on thread order
    and are the same after --resume, in-process and over Flower.
    """
    if shard_size < 1:
        raise ValueError("this client holds no training examples: give every client at least one")
    steps_per_epoch = -(-shard_size // batch_size)
    epoch, position = divmod(global_step, steps_per_epoch)
    order = list(range(shard_size))
    random.Random(f"{epoch_seed}:epoch:{epoch}").shuffle(order)
    return order[position * batch_size:(position + 1) * batch_size]


def sample_batch(examples: list[Example], settings: LocalSettings, client_id: str, global_step: int) -> list[Example]:
    """The client's batch for its global_step'th local step (see batch_indices)."""
    indices = batch_indices(len(examples), settings.batch_size, f"{settings.seed}:{client_id}", global_step)
    return [examples[i] for i in indices]


def round_batches(examples: list[Example], settings: LocalSettings, client_id: str,
                  round_index: int) -> list[list[Example]]:
    """The batches of round round_index: the loader's steps (r-1)*max_steps ... r*max_steps-1, so a round
    continues where the previous one stopped (a client that sat out a round skips that round's batches)."""
    first = (round_index - 1) * settings.max_steps
    return [sample_batch(examples, settings, client_id, first + step) for step in range(settings.max_steps)]


def train_client(client_id: str, task: TaskSpec, batches: list[list[Example]], start_prompt: str, round_index: int,
                 engines: Engines, settings: LocalSettings,
                 on_step: Callable[[], None] | None = None) -> ClientUpdate:
    """One local step per batch from the server's prompt, each continuing from the last: the round's
    settings.max_steps batches of the client's data loader (round_batches).

    The momentum optimizer's history starts empty every round: a round starts from the server's merged
    prompt, not from where this client's steps left off, and the client keeps nothing between rounds, so
    --resume from a round's checkpoint (and a Flower client in a fresh process) sees what an uninterrupted
    run sees."""
    update = ClientUpdate(client_id=client_id, round=round_index, start_prompt=start_prompt, prompt=start_prompt)
    history = MomentumHistory(settings.momentum_window) if settings.optimizer == "tgd_momentum" else None
    for step, batch in enumerate(batches):
        update.prompt, outcome = local_step(update.prompt, batch, task, engines, settings, step, history)
        update.steps.append(outcome)
        if on_step is not None:
            on_step()
    return update


def release_update(update: ClientUpdate, examples: Sequence[Example], policy: ClientPolicy) -> ClientUpdate:
    """The last step on a client before its update leaves (changed in place and returned): a simulated
    attacker swaps in its poisoned prompt, then the text is audited and guarded against the client's own
    examples. In-process simulation and the Flower ClientApp both call it, so both send the same thing."""
    if policy.attack is not None and update.error is None:
        update.prompt = poisoned_prompt(policy.attack, policy.seed, update.client_id, update.round)
    update.prompt, update.leakage = guard_prompt(update.prompt, update.start_prompt, examples, policy.guard)
    if update.error and policy.guard.mode != "off":  # an error message may echo a request, examples and all
        update.error, spans = redact_copies(update.error, examples, policy.guard.min_words)
        update.leakage.redacted_spans += spans
    return update


# (the planned round, the global prompt) -> one update per chosen client, in the plan's order. In-process
# simulation (train_in_process) and Flower (fedtextgrad_flower.federation) each provide one.
TrainRound = Callable[["Round", str], list["ClientUpdate"]]


def train_in_process(engines: Engines, settings: LocalSettings, outbound: OutboundPlan,
                     on_step: Callable[[], None] | None = None) -> TrainRound:
    """The round's clients as threads of this process, each on the batches the plan gives it."""
    def train_one(planned: ClientRound, prompt: str, round_index: int) -> ClientUpdate:
        client = planned.client
        try:
            update = train_client(client.client_id, client.task, planned.batches, prompt, round_index, engines,
                                  settings, on_step=on_step)
        except Exception as exc:  # one failing client must not stop the round
            update = ClientUpdate(client.client_id, round_index, prompt, prompt, error=f"{type(exc).__name__}: {exc}")
        return release_update(update, client.examples, outbound.for_client(client.client_id))

    def train_round(planned: Round, prompt: str) -> list[ClientUpdate]:
        return run_concurrently([lambda c=c: train_one(c, prompt, planned.index) for c in planned.clients])

    return train_round
