"""What the server tells each client about its outgoing update: the leak guard every client applies, and
which clients are simulated attackers. The client applies it last: utils.federated.client.release_update."""

from __future__ import annotations

from dataclasses import dataclass, field

from utils.run_config import RunConfig

from .attacks import choose_malicious
from .leakage import LeakGuard


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
