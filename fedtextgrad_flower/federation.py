"""The server's side of the wire: find the SuperNode of every client, then train rounds through the grid."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from utils.federated.client import ClientUpdate, TrainRound
from utils.federated.experiment import Experiment
from utils.federated.plan import Round
from utils.reporting.tracking import RunLog

from .records import UpdateLimits, short_reason, train_content, update_from_reply

POLL_S = 1.0
# A connected node may need a while to answer (a SuperNode starts a ClientApp process per message).
ANSWER_WAIT_S = 60.0


class FederationError(RuntimeError):
    """The SuperNodes of the run's clients did not all show up."""


def discover_clients(grid: Grid, client_ids: list[str], experiment: ConfigRecord, wait_s: float) -> dict[str, int]:
    """client id -> node id: ask every connected node which client it is, until all are found.

    wait_s bounds the wait for nodes to connect; a connected node gets ANSWER_WAIT_S more to answer."""
    deadline = time.monotonic() + wait_s
    found: dict[str, int] = {}
    answered: set[int] = set()
    problems: dict[int, str] = {}
    while True:
        new = [node for node in grid.get_node_ids() if node not in answered]
        for node, answer in _identify(grid, new, experiment, max(deadline - time.monotonic(), ANSWER_WAIT_S)):
            answered.add(node)
            if answer not in client_ids:
                problems[node] = answer  # misconfigured, or a client this run does not have
            elif answer in found:
                raise FederationError(f"nodes {found[answer]} and {node} both say they are client {answer!r}: "
                                      "give every SuperNode its own partition-id (or task)")
            else:
                found[answer] = node
        missing = [c for c in client_ids if c not in found]
        if not missing:
            return found
        if time.monotonic() >= deadline:
            seen = "; ".join(f"node {n}: {p}" for n, p in problems.items())
            raise FederationError(f"after {wait_s:g} s no SuperNode has joined as client(s) {', '.join(missing)}"
                                  f"{' (' + seen + ')' if seen else ''}: start one per client with "
                                  "--node-config 'partition-id=N', or raise node_wait")
        time.sleep(POLL_S)


def _identify(grid: Grid, nodes: list[int], experiment: ConfigRecord,
              timeout: float) -> Iterable[tuple[int, str]]:
    if not nodes:
        return []
    messages = [Message(RecordDict({"experiment": experiment}), dst_node_id=node, message_type=MessageType.QUERY)
                for node in nodes]
    answers = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            answers.append((node, f"error: {short_reason(reply.error.reason or '')}"))
        else:
            answers.append((node, str(reply.content["identity"]["client_id"])))
    return answers


def flower_train_round(grid: Grid, nodes: dict[str, int], experiment: ConfigRecord, exp: Experiment,
                       log: RunLog, round_timeout: float, limits: UpdateLimits) -> TrainRound:
    """TrainRound over Flower: one train message per selected client, replies back as ClientUpdates
    (a reply of the wrong shape or over the limits becomes a failed update: the others go on)."""
    timeout = round_timeout or None

    def train_round(planned: Round, prompt: str) -> list[ClientUpdate]:
        client_ids, round_index = planned.client_ids, planned.index
        messages = [Message(train_content(experiment, cid, prompt, round_index, exp.settings,
                                          exp.outbound.for_client(cid)),
                            dst_node_id=nodes[cid], message_type=MessageType.TRAIN, group_id=str(round_index))
                    for cid in client_ids]
        replies = {reply.metadata.src_node_id: reply for reply in grid.send_and_receive(messages, timeout=timeout)}
        updates = []
        for cid in client_ids:
            update, report = update_from_reply(replies.get(nodes[cid]), cid, prompt, round_index, timeout, limits)
            # Remote LLM costs are counted by the client's own process; the round's "llm" holds the server's.
            log.event("flower_client", round=round_index, client=cid, node=nodes[cid], **report)
            updates.append(update)
        return updates

    return train_round
