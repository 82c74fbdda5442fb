"""The ClientApp: a node trains the server's prompt on its own examples with its own engines.

`query` tells the server which client this node is; `train` runs exactly max_steps local steps
(utils.federated.client.train_client on the round's batches of its own data, as in-process) and replies
with the update. A failure is caught and sent as a failed update, so the server aggregates the others
and records the failure.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from textgrad.serving.stats import metered
from utils.federated.client import release_update, round_batches, train_client
from utils.federated.runner import make_engines
from utils.tasks.registry import Example

from .node import client_id_of, load_own_client, node_args
from .records import experiment_from_record, failed_update, read_policy, read_train_content, update_content

app = ClientApp()


@app.query()
def identify(message: Message, context: Context) -> Message:
    experiment = experiment_from_record(message.content["experiment"])
    client_id = client_id_of(experiment, context.node_config)
    return Message(RecordDict({"identity": ConfigRecord({"client_id": client_id})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    experiment, client_id, prompt, round_index, settings = read_train_content(message.content)
    started = time.monotonic()
    examples: list[Example] = []
    with metered() as cost:  # this node's calls only, even where a process hosts several
        try:
            args = node_args(experiment, context.node_config)
            client = load_own_client(args, context.node_config, client_id)
            examples = client.examples
            engines = make_engines(args)
            batches = round_batches(examples, settings, client.client_id, round_index)  # as in-process
            update = train_client(client.client_id, client.task, batches, prompt, round_index, engines, settings)
        except Exception as exc:  # any failure is this client's failure, not the round's
            update = failed_update(client_id, round_index, prompt, f"{type(exc).__name__}: {exc}")
        # The last step before anything leaves this node: the leak guard and audit, as in-process.
        update = release_update(update, examples, read_policy(message.content))
    report = {**cost.as_dict(), "seconds": round(time.monotonic() - started, 3)}
    return Message(update_content(update, report), reply_to=message)
