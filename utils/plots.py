"""PNG plots of a run, drawn from the round history in results.json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers
import matplotlib.pyplot as plt  # noqa: E402

from .files import write_bytes_atomic  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def plot_run(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """validation_accuracy.png, client_train_accuracy.png, prompt_length.png."""
    rounds = results["rounds"]
    xs = [r["round"] for r in rounds]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    zero = results["zero_shot"]["val"]["mean"]
    ax.plot([0, *xs], [zero, *[r["val"]["mean"] for r in rounds]], marker="o", label="mean")
    for task in results["tasks"] if len(results["tasks"]) > 1 else []:
        ax.plot([0, *xs], [results["zero_shot"]["val"][task], *[r["val"][task] for r in rounds]],
                marker=".", linestyle="--", label=task)
    ax.set(xlabel="round (0 = starting prompt)", ylabel="validation accuracy", ylim=(-0.02, 1.02),
           title="Validation accuracy of the global prompt")
    ax.legend(fontsize="small")
    paths.append(out_dir / "validation_accuracy.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4))
    clients = sorted({c for r in rounds for c in r["client_train_accuracy"]})
    for client in clients:
        pts = [(r["round"], r["client_train_accuracy"][client]) for r in rounds
               if client in r["client_train_accuracy"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=client)
    ax.set(xlabel="round", ylabel="mean local batch accuracy", ylim=(-0.02, 1.02),
           title="Per-client training accuracy")
    ax.legend(fontsize="small")
    paths.append(out_dir / "client_train_accuracy.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["aggregate_tokens"] for r in rounds], marker="o", label="aggregate")
    ax.plot(xs, [sum(r["client_prompt_tokens"].values()) / max(1, len(r["client_prompt_tokens"]))
                 for r in rounds], marker="s", linestyle="--", label="client mean")
    ax.set(xlabel="round", ylabel="tokens", title="Prompt length")
    ax.legend(fontsize="small")
    paths.append(out_dir / "prompt_length.png")
    _save(fig, paths[-1])
    return paths
