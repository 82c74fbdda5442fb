"""PNG plots of a run, drawn from the round history in results.json."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .files import write_bytes_atomic  # noqa: E402
from .prompt_stats import token_axis_label  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _finish(fig: Any, ax: Any, path: Path, **labels: Any) -> Path:
    ax.set(**labels)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.legend(fontsize="small")
    _save(fig, path)
    return path


def plot_run(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """validation_accuracy.png, client_train_accuracy.png, prompt_length.png."""
    rounds = results["rounds"]
    xs = [r["round"] for r in rounds]
    accuracy_axis = {"ylim": (-0.02, 1.02)}

    fig, ax = plt.subplots(figsize=(6, 4))
    zero = results["zero_shot"]["val"]
    ax.plot([0, *xs], [zero["mean"], *[r["val"]["mean"] for r in rounds]], marker="o", label="mean")
    for task in results["tasks"] if len(results["tasks"]) > 1 else []:
        ax.plot([0, *xs], [zero[task], *[r["val"][task] for r in rounds]], marker=".", linestyle="--", label=task)
    validation = _finish(fig, ax, out_dir / "validation_accuracy.png", xlabel="round (0 = starting prompt)",
                         ylabel="validation accuracy", title="Validation accuracy of the global prompt",
                         **accuracy_axis)

    fig, ax = plt.subplots(figsize=(6, 4))
    for client in sorted({c for r in rounds for c in r["client_train_accuracy"]}):
        pts = [(r["round"], r["client_train_accuracy"][client]) for r in rounds
               if r["client_train_accuracy"].get(client) is not None]  # None: every step skipped
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=client)
    training = _finish(fig, ax, out_dir / "client_train_accuracy.png", xlabel="round",
                       ylabel="mean local batch accuracy", title="Per-client training accuracy", **accuracy_axis)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["aggregate_tokens"] for r in rounds], marker="o", label="aggregate")
    ax.plot(xs, [sum(r["client_prompt_tokens"].values()) / max(1, len(r["client_prompt_tokens"]))
                 for r in rounds], marker="s", linestyle="--", label="client mean")
    length = _finish(fig, ax, out_dir / "prompt_length.png", xlabel="round", ylabel=token_axis_label([results]),
                     title="Prompt length")
    return [validation, training, length]
