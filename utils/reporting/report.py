"""Results tables and plots over many runs, ready for a paper draft.

    python -m utils.reporting.report RUN_DIR_OR_FOLDER... [--out DIR]

Every folder holding a results.json (given directly or found below a given folder) is one run. Runs
are grouped by module / tasks / aggregation / local steps / clients / batch size (plus any other
setting that differs between the runs, e.g. the engines); each group's numbers are the mean ± sample
standard deviation over its runs (seeds). The markdown goes to stdout; --out also writes report.md and
the PNG plots there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.files import write_text_atomic

from .paper_tables import judge_line, paper_tables
from .prompt_stats import token_axis_label
from .runs import (
    EXTRA_KEYS,
    GROUP_KEYS,
    METRICS,
    Group,
    ReportError,
    Run,
    group_runs,
    leak_of_round,
    load_runs,
    mean_std,
    per_task_test,
    series_label,
    summarise,
    versus_points,
)


def fmt(stat: tuple[float, float, int] | None, decimals: int) -> str:
    if stat is None:
        return "n/a"
    mean, std, n = stat
    return f"{mean:.{decimals}f}" if n == 1 else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def varying_extras(groups: list[Group]) -> list[str]:
    return [k for k in EXTRA_KEYS if len({g.value(k) for g in groups}) > 1]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def _all_results(groups: list[Group]) -> list[dict[str, Any]]:
    return [run.results for group in groups for run in group.runs]


def markdown_report(groups: list[Group]) -> str:
    extras = varying_extras(groups)
    header = [title for _, title in GROUP_KEYS] + extras + ["seeds"] + [title for _, title, _ in METRICS]
    rows = []
    for group in groups:
        row = summarise(group)
        rows.append([str(row[k]) for k, _ in GROUP_KEYS] + [str(row[k]) for k in extras]
                    + [str(len(set(row["seeds"])))] + [fmt(row[name], d) for name, _, d in METRICS])
    parts = [
        "## Results",
        "",
        _md_table(header, rows),
        "",
        "Accuracies are means over tasks; cells are mean ± sample std over seeds. test (last/best): test "
        "accuracy of the final and of the best-on-validation global prompt. prompt tokens and UID var: "
        f"the final global prompt's length ({token_axis_label(_all_results(groups))}) and variance of its "
        "per-token surprisal (nats², from the test engine's log-probabilities; n/a where the engine gives none). "
        "calls made: every LLM call of the run, answers from the response cache included (what the method "
        "costs); requests sent and tokens: what reached the servers (runs sharing a cache send fewer). seeds: "
        "distinct seeds among the group's runs. copied run and shingle share: the leak audit's largest values "
        "over rounds and clients for the updates that left the clients (after the leak guard): the longest run "
        "of words copied from one of the client's own training examples, and the share of the client's "
        "distinct 8-word shingles found in its update.",
    ]
    parts += ["", judge_line(groups), *paper_tables(groups, fmt)]
    parts += estimate_section([run for group in groups for run in group.runs])
    parts += merge_tree_section([run for group in groups for run in group.runs])
    multi_task = [g for g in groups if len(g.runs[0].results["tasks"]) > 1]
    if multi_task:
        task_rows = []
        for group in multi_task:
            for task, stat in per_task_test(group).items():
                task_rows.append([str(group.value(k)) for k, _ in GROUP_KEYS if k != "tasks"] + [task, fmt(stat, 3)])
        header = [title for k, title in GROUP_KEYS if k != "tasks"] + ["task", "test (best)"]
        parts += ["", "### Per task (runs with several tasks)", "", _md_table(header, task_rows)]
    return "\n".join(parts) + "\n"


def _estimate_row(run: Run) -> list[str]:
    estimate, llm = run.estimate or {}, run.results.get("llm", {})
    total = estimate.get("total") or {}
    extra = sum(c.get("calls", 0) for c in estimate.get("conditional") or [])
    est_tokens = total.get("prompt_tokens", 0) + total.get("completion_tokens", 0)
    tokens = llm.get("prompt_tokens", 0) + llm.get("completion_tokens", 0)
    calls = f"{total.get('calls', 0)}" + (f" (+{extra})" if extra else "")
    ratio = f"{tokens / est_tokens:.2f}" if est_tokens else "n/a"
    return [run.path.name, calls, str(llm.get("calls", "n/a")), str(est_tokens), str(tokens), ratio]


def estimate_section(runs: list[Run]) -> list[str]:
    """Estimate vs actual cost of the runs that recorded an estimate at their start (markdown lines)."""
    estimated = [run for run in runs if run.estimate]
    if not estimated:
        return []
    header = ["run", "calls (estimate)", "calls (actual)", "tokens (estimate)", "tokens (actual)",
              "actual / estimated tokens"]
    return ["", "### Estimate vs actual", "", _md_table(header, [_estimate_row(r) for r in estimated]), "",
            "The estimate is the one each run made at its start (as python main.py ... --estimate prints it): it "
            "assumes every optimizer reply usable and kept and the best prompt being the last one; (+n): the "
            "calls of an earlier best prompt's final test. Its tokens use the token limits until a finished run "
            "of the engine calibrates them."]


def merge_tree_section(runs: list[Run]) -> list[str]:
    """The shape of each round's merge (requests per level) of the runs that merged by an LLM (markdown)."""
    rows = []
    for run in runs:
        trees = [(r["round"], r.get("merge_tree")) for r in run.results.get("rounds") or []]
        trees = [(index, tree) for index, tree in trees if tree]
        if trees:
            shapes = ", ".join(f"{index}: {'+'.join(map(str, tree['levels'])) or '0'}" for index, tree in trees)
            rows.append([run.path.name, shapes, str(max(tree["depth"] for _, tree in trees)),
                         str(sum(tree["requests"] for _, tree in trees)),
                         str(sum(tree["over_budget"] for _, tree in trees)),
                         str(sum(tree["left_out"] for _, tree in trees))])
    if not rows:
        return []
    header = ["run", "requests per level, by round", "deepest", "merge requests", "over budget", "left out"]
    return ["", "### Merge trees", "", _md_table(header, rows), "",
            "When the clients' prompts do not fit one merge request, the server merges them in groups and then "
            "merges the results (level 1 merges client prompts). over budget: merges still longer than "
            "--max_prompt_tokens after being asked once more; left out: client prompts too long for any merge "
            "request (never cut)."]


# ---------------------------------------------------------------------------------- plots


def group_colours(groups: list[Group]) -> dict[tuple, str]:
    """One colour per group, the same in every plot of the report."""
    from .plots import colour

    return {group.key: colour(i) for i, group in enumerate(groups)}


def _round_series(group: Group, value: Callable[[dict[str, Any]], float | None],
                  zero: Callable[[dict[str, Any]], float | None] | None) -> tuple[list[int], list[float], list[float]]:
    by_round: dict[int, list[float | None]] = {}
    for run in group.runs:
        if zero is not None:
            by_round.setdefault(0, []).append(zero(run.results))
        for entry in run.results.get("rounds") or []:
            by_round.setdefault(entry["round"], []).append(value(entry))
    xs, means, stds = [], [], []
    for round_index in sorted(by_round):
        stat = mean_std(by_round[round_index])
        if stat is not None:
            xs.append(round_index)
            means.append(stat[0])
            stds.append(stat[1])
    return xs, means, stds


def _uid_variance(entry: dict[str, Any]) -> float | None:
    return (entry.get("aggregate_uid") or {}).get("variance")


def round_series(groups: list[Group], value: Callable[[dict[str, Any]], float | None],
                 zero: Callable[[dict[str, Any]], float | None] | None) -> list[Any]:
    """One line per group, in the group's colour."""
    from .plots import Series

    colours = group_colours(groups)
    series = []
    for group in groups:
        xs, means, stds = _round_series(group, value, zero)
        series.append(Series(series_label(group, groups), list(xs), means, colours[group.key],
                             yerr=stds if len(group.runs) > 1 else None))
    return series


def _per_round_plot(groups: list[Group], path: Path, value: Callable[[dict[str, Any]], float | None],
                    zero: Callable[[dict[str, Any]], float | None] | None, ylabel: str, title: str,
                    accuracy: bool = False) -> Path:
    from .plots import draw, save_png

    series = round_series(groups, value, zero)
    rounds = sorted({x for s in series for x in s.xs})
    fig = draw(series, xlabel="round" + (" (0 = starting prompt)" if zero else ""), ylabel=ylabel, title=title,
               accuracy=accuracy, xticks=rounds)
    return save_png(fig, path, dpi=150)


def versus_series(groups: list[Group], key: str) -> list[Any]:
    """Final test accuracy (best prompt) against one setting; one line per combination of the rest."""
    from .plots import Series, colour

    series = []
    for index, (label, points) in enumerate(versus_points(groups, key).items()):
        series.append(Series(label, [p[0] for p in points], [p[1][0] for p in points], colour(index),
                             yerr=[p[1][1] for p in points]))
    return series


def _versus_plot(groups: list[Group], key: str, xlabel: str, path: Path) -> Path:
    from .plots import draw, save_png

    fig = draw(versus_series(groups, key), xlabel=xlabel, ylabel="test accuracy (best prompt)",
               title=f"Accuracy vs {xlabel}", accuracy=True, xticks=sorted({g.value(key) for g in groups}))
    return save_png(fig, path, dpi=150)


def write_plots(groups: list[Group], out_dir: Path) -> list[Path]:
    """The per-round plots always; an accuracy-vs-setting plot for each setting the runs vary."""
    paths = [
        _per_round_plot(groups, out_dir / "validation_by_round.png", lambda e: e["val"]["mean"],
                        lambda r: r["zero_shot"]["val"]["mean"], "validation accuracy",
                        "Validation accuracy of the global prompt", accuracy=True),
        _per_round_plot(groups, out_dir / "prompt_length_by_round.png", lambda e: e.get("aggregate_tokens"),
                        lambda r: r.get("starting_prompt_tokens"), token_axis_label(_all_results(groups)),
                        "Length of the global prompt"),
    ]
    if any(_uid_variance(e) is not None for g in groups for r in g.runs for e in r.results.get("rounds") or []):
        paths.append(_per_round_plot(groups, out_dir / "uid_variance_by_round.png", _uid_variance, None,
                                     "surprisal variance (nats²)", "UID: surprisal variance of the global prompt"))
    if any(leak_of_round(e) is not None for g in groups for r in g.runs for e in r.results.get("rounds") or []):
        paths.append(_per_round_plot(groups, out_dir / "leakage_by_round.png", leak_of_round, None,
                                     "longest copied run (words)",
                                     "Leakage: words copied from a client's examples (max over clients)"))
    for key, xlabel in (("local_steps", "local steps"), ("clients", "clients"), ("batch_size", "batch size")):
        if len({g.value(key) for g in groups}) > 1:
            paths.append(_versus_plot(groups, key, xlabel, out_dir / f"accuracy_vs_{key}.png"))
    return paths


# ---------------------------------------------------------------------------------- command line


def build_report(paths: list[str | Path], out_dir: Path | None = None) -> tuple[str, list[Path], list[str]]:
    """(markdown, plot files written, notes about skipped folders)."""
    runs, notes = load_runs(paths)
    groups = group_runs(runs)
    markdown = markdown_report(groups)
    plots: list[Path] = []
    if out_dir is not None:
        plots = write_plots(groups, out_dir)
        images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
        sources = "\n".join(f"- {r.path}" for r in runs)
        write_text_atomic(out_dir / "report.md", f"{markdown}\n## Plots\n\n{images}\n\n## Runs\n\n{sources}\n")
    return markdown, plots, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.reporting.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding runs")
    parser.add_argument("--out", type=Path, default=None, help="also write report.md and PNG plots here")
    args = parser.parse_args(argv)
    try:
        markdown, plots, notes = build_report(args.paths, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    print(markdown, end="")
    if args.out is not None:
        print(f"\nwrote {args.out / 'report.md'} and {len(plots)} plots: " + ", ".join(p.name for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
