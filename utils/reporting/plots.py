"""PNG plots of a run, drawn from the round history in results.json, and the drawing both they and the
report (utils.reporting.report) share.

    python -m utils.reporting.plots RUN_DIR_OR_FOLDER...   # each run's plots into its plots/ folder

A run draws its own plots as it ends only with --plots (matplotlib takes longer to load and draw than
a small run takes to finish); this command draws them any time after, from results.json.

Readable with any number of lines: the legend sits outside the axes, every line has its own marker,
lines that would lie exactly on top of each other are shifted sideways a little, and a task keeps one
colour in every plot (in a heterogeneous run a client is its task).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import matplotlib

matplotlib.use("Agg")  # no screen on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils.files import write_bytes_atomic  # noqa: E402

from .prompt_stats import token_axis_label  # noqa: E402

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
OVERALL = "black"  # the mean over tasks, the global prompt
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":")
OFFSET = 0.06  # x shift between series that coincide, in x units (rounds)
MAX_CLIENT_LINES = 10  # more clients than this: the training plot draws their mean per round, not a line each


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    colour: str
    yerr: list[float] | None = None
    marker: str = "o"
    linestyle: str = "-"


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def style(series: list[Series]) -> list[Series]:
    """Own marker and line style per series; series equal to an earlier one shifted sideways."""
    seen: dict[tuple, int] = {}
    for index, s in enumerate(series):
        s.marker, s.linestyle = MARKERS[index % len(MARKERS)], LINESTYLES[index % len(LINESTYLES)]
        shape = (tuple(s.xs), tuple(round(y, 9) for y in s.ys))
        repeats = seen.get(shape, 0)
        seen[shape] = repeats + 1
        if repeats:
            shift = OFFSET * ((repeats + 1) // 2) * (1 if repeats % 2 else -1)
            s.xs = [x + shift for x in s.xs]
    return series


def draw(series: list[Series], *, xlabel: str, ylabel: str, title: str, accuracy: bool = False,
         xticks: list[Any] | None = None) -> Any:
    """The figure of these series, legend outside the axes on the right."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for s in style(series):
        ax.errorbar(s.xs, s.ys, yerr=s.yerr, color=s.colour, marker=s.marker, linestyle=s.linestyle, capsize=3,
                    markersize=5, label=s.label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if accuracy:
        ax.set_ylim(-0.02, 1.02)
    if xticks is not None and len(xticks) <= 12:
        ax.set_xticks(xticks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    if series:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def save_png(fig: Any, path: Path, dpi: int = 100) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")  # "tight" keeps the outside legend
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------- one run


def task_colours(results: dict[str, Any]) -> dict[str, str]:
    """Each task's colour, and each client's: its task's in a heterogeneous run, else its own."""
    tasks = list(results["tasks"])
    colours = {task: colour(i) for i, task in enumerate(tasks)}
    others = [c for c in results.get("clients") or [] if c not in colours]
    colours.update({client: colour(len(tasks) + i) for i, client in enumerate(others)})
    return colours


def run_series(results: dict[str, Any]) -> dict[str, list[Series]]:
    """The lines of each plot of a run, by file name."""
    rounds = results["rounds"]
    xs = [0, *[r["round"] for r in rounds]]
    colours = task_colours(results)
    zero = results["zero_shot"]["val"]
    validation = [Series("mean over tasks" if len(results["tasks"]) > 1 else "validation", xs,
                         [zero["mean"], *[r["val"]["mean"] for r in rounds]], OVERALL)]
    for task in results["tasks"] if len(results["tasks"]) > 1 else []:
        validation.append(Series(task, xs, [zero[task], *[r["val"][task] for r in rounds]], colours[task]))

    training = []
    clients = sorted({c for r in rounds for c in r["client_train_accuracy"]})
    for client in clients if len(clients) <= MAX_CLIENT_LINES else []:
        pts = [(r["round"], r["client_train_accuracy"][client]) for r in rounds
               if r["client_train_accuracy"].get(client) is not None]  # None: every step skipped
        training.append(Series(client, [p[0] for p in pts], [p[1] for p in pts], colours.get(client, OVERALL)))
    if len(clients) > MAX_CLIENT_LINES:  # many clients: the mean over each round's own (sampled) clients
        training.append(_mean_over_clients(rounds))

    start = results.get("starting_prompt_tokens")
    lead = [start] if start is not None else []  # round 0: the starting prompt, every client's first prompt
    length_xs = xs if lead else xs[1:]
    client_mean = [sum(r["client_prompt_tokens"].values()) / max(1, len(r["client_prompt_tokens"])) for r in rounds]
    length = [Series("global prompt", length_xs, [*lead, *[r["aggregate_tokens"] for r in rounds]], OVERALL),
              Series("client prompts (mean)", length_xs, [*lead, *client_mean], colour(7))]
    return {"validation_accuracy.png": validation, "client_train_accuracy.png": training,
            "prompt_length.png": length, **complexity_series(results)}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _points(xs: list[int], ys: list[float | None]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def complexity_series(results: dict[str, Any]) -> dict[str, list[Series]]:
    """The complexity plots of a run that recorded the measures: character entropy and compression ratio of the
    global prompt and the clients' (mean) from round 0, and the global prompt's surprisal (mean ± std)."""
    rounds = results["rounds"]
    if not rounds or not all(r.get("aggregate_complexity") for r in rounds):
        return {}  # a run from before the measures were recorded
    start = results.get("starting_prompt_complexity") or {}
    xs = [0, *[r["round"] for r in rounds]]
    plots = {}
    for measure, name in (("entropy", "prompt_entropy.png"), ("compression_ratio", "prompt_compression.png")):
        clients = [_mean([c[measure] for c in r["client_prompt_complexity"].values()]) for r in rounds]
        plots[name] = [Series("global prompt", *_points(xs, [start.get(measure), *[r["aggregate_complexity"][measure]
                                                                                    for r in rounds]]), OVERALL),
                       Series("client prompts (mean)", *_points(xs, [start.get(measure), *clients]), colour(7))]
    uid = [(r["round"], r["aggregate_uid"]) for r in rounds if r.get("aggregate_uid")]
    if uid:
        plots["prompt_uid.png"] = [Series("global prompt", [x for x, _ in uid], [u["mean"] for _, u in uid], OVERALL,
                                          yerr=[u["variance"] ** 0.5 for _, u in uid])]
    return plots


PLOT_LABELS = {
    "validation_accuracy.png": dict(xlabel="round (0 = starting prompt)", ylabel="validation accuracy",
                                    title="Validation accuracy of the global prompt", accuracy=True),
    "client_train_accuracy.png": dict(xlabel="round", ylabel="mean local batch accuracy",
                                      title="Per-client training accuracy", accuracy=True),
    "prompt_length.png": dict(xlabel="round (0 = starting prompt)", title="Prompt length"),
    "prompt_entropy.png": dict(xlabel="round (0 = starting prompt)", ylabel="character entropy (bits/char)",
                               title="Prompt complexity: character entropy"),
    "prompt_compression.png": dict(xlabel="round (0 = starting prompt)", ylabel="zlib size / raw size",
                                   title="Prompt complexity: compression ratio (lower: more repetitive)"),
    "prompt_uid.png": dict(xlabel="round", ylabel="surprisal per token (nats), mean ± std",
                           title="UID: surprisal of the global prompt"),
}


def _mean_over_clients(rounds: list[dict[str, Any]]) -> Series:
    """Mean and standard deviation of the training accuracy over the clients that took part in each round."""
    xs, means, stds = [], [], []
    for r in rounds:
        values = [v for v in r["client_train_accuracy"].values() if v is not None]
        if values:
            mean = sum(values) / len(values)
            xs.append(r["round"])
            means.append(mean)
            stds.append((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)
    return Series("mean over the round's clients (± std)", xs, means, OVERALL, yerr=stds)


def plot_run(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """validation_accuracy.png, client_train_accuracy.png, prompt_length.png; with the complexity measures,
    prompt_entropy.png and prompt_compression.png, and prompt_uid.png where log-probabilities were given."""
    series = run_series(results)
    rounds = [0, *[r["round"] for r in results["rounds"]]]
    labels = {**PLOT_LABELS, "prompt_length.png": {**PLOT_LABELS["prompt_length.png"],
                                                   "ylabel": token_axis_label([results])}}
    return [save_png(draw(series[name], xticks=rounds, **labels[name]), out_dir / name)
            for name in labels if name in series]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    from .runs import ReportError, load_runs

    parser = _Parser(prog="python -m utils.reporting.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding runs")
    args = parser.parse_args(argv)
    try:
        runs, notes = load_runs(args.paths)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    for run in runs:
        drawn = plot_run(run.results, run.path / "plots")
        print(f"{run.path / 'plots'}: " + ", ".join(p.name for p in drawn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
