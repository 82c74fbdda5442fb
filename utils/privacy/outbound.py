"""The last step on a client before its update leaves: (simulated attackers only) swap in the
poisoned prompt, then audit and guard the text against the client's own examples. In-process
simulation and the Flower ClientApp both call release_update, so both paths send the same thing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from utils.federated.client import ClientUpdate
from utils.run_config import RunConfig
from utils.tasks.registry import Example

from .attacks import choose_malicious, poisoned_prompt
from .leakage import LeakGuard, guard_prompt, redact_copies


@dataclass(frozen=True)
class ClientPolicy:
    """One client's rules for a round, sent by the server with the round's prompt."""

    guard: LeakGuard = field(default_factory=LeakGuard)
    attack: str | None = None  # set for the simulated malicious clients only
    seed: int = 42


@dataclass(frozen=True)
class OutboundPlan:
    """The server's view: one guard for every client, and which clients are (simulated) attackers."""

    guard: LeakGuard = field(default_factory=LeakGuard)
    attack: str = "inject"
    malicious: tuple[str, ...] = ()
    seed: int = 42

    @classmethod
    def from_args(cls, args: RunConfig, client_ids: list[str]) -> OutboundPlan:
        return cls(LeakGuard(args.leak_guard, args.leak_min_words), args.attack,
                   choose_malicious(client_ids, args.malicious_clients, args.seed), args.seed)

    def for_client(self, client_id: str) -> ClientPolicy:
        return ClientPolicy(self.guard, self.attack if client_id in self.malicious else None, self.seed)


def release_update(update: ClientUpdate, examples: Sequence[Example], policy: ClientPolicy) -> ClientUpdate:
    """The update as it may leave the client (changed in place and returned), with its leak audit."""
    if policy.attack is not None and update.error is None:
        update.prompt = poisoned_prompt(policy.attack, policy.seed, update.client_id, update.round)
    update.prompt, update.leakage = guard_prompt(update.prompt, update.start_prompt, examples, policy.guard)
    if update.error and policy.guard.mode != "off":  # an error message may echo a request, examples and all
        update.error, spans = redact_copies(update.error, examples, policy.guard.min_words)
        update.leakage.redacted_spans += spans
    return update
