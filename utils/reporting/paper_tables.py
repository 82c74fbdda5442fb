"""The paper's tables, from whatever runs a report covers (each appears when its runs are there):

- centralized vs federated: test accuracy per task of the centralized baseline, and of each federated
  setting with its drop from the baseline (runs of train_centralized and of a federated module);
- aggregation: concatenation vs summarization vs UID summarization, with the final prompt's length and
  complexity and the merges that fell back to concatenation or overflowed (federated runs, two methods or more);
- accuracy against local steps, clients and batch size (runs that differ in that setting).

Accuracy is always the test accuracy of the best-on-validation prompt; a cell is the mean ± sample std over
the group's seeds. scripts/run_paper.sh writes one report per table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textgrad.structured import CONTEXT_OVERFLOW

from .runs import GROUP_KEYS, Group, mean_std, per_task_test, series_label, varying_label, versus_points

SETTINGS = {"centralized": "centralized", "homo_fed": "homogeneous", "hetero_fed": "heterogeneous"}
METHOD_ORDER = ("-", "concat", "summarization", "sum_uid")
VERSUS = (("local_steps", "local steps"), ("clients", "clients"), ("batch_size", "batch size"))
Stat = tuple[float, float, int] | None
Format = Callable[[Stat, int], str]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(cells) + " |" for cells in rows]]


def _conditions(groups: list[Group]) -> dict[tuple, str]:
    """Each group's condition (everything but module, tasks, aggregation and clients) and its label: empty when
    all groups share one, else the settings that tell them apart."""
    left_out = ("module", "tasks", "aggregation", "clients")
    keys = {g.key: tuple((k, v) for k, v in g.key if k not in left_out) for g in groups}
    if len(set(keys.values())) <= 1:
        return {g.key: "" for g in groups}
    return {g.key: series_label(g, groups, leave_out=left_out) for g in groups}


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def central_vs_federated(groups: list[Group], fmt: Format) -> list[str]:
    """Rows: the centralized baseline and each federated setting (module, method, clients); columns: the tasks,
    each federated cell with its drop from the baseline of the same task and condition."""
    central = [g for g in groups if g.value("module") == "centralized"]
    federated = [g for g in groups if g.value("module") in ("homo_fed", "hetero_fed")]
    if not central or not federated:
        return []
    conditions = _conditions(central + federated)
    tasks = list(dict.fromkeys(t for g in central + federated for t in g.runs[0].results["tasks"]))
    baseline: dict[tuple[str, str], Stat] = {}
    rows: dict[tuple, dict[str, Stat]] = {}
    for group in central + federated:
        module = group.value("module")
        clients = f" ({group.value('clients')} clients)" if module == "homo_fed" else ""
        method = "" if module == "centralized" else f", {group.value('aggregation')}"
        condition = conditions[group.key]
        label = SETTINGS[module] + clients + method + (f"; {condition}" if condition else "")
        order = (list(SETTINGS).index(module), _method_rank(group.value("aggregation")), group.value("clients"),
                 condition, label)
        for task, stat in per_task_test(group).items():
            rows.setdefault(order, {})[task] = stat
            if module == "centralized":
                baseline[(condition, task)] = stat
    lines = []
    for order, cells in sorted(rows.items(), key=lambda item: item[0]):
        condition, label = order[3], order[4]
        row = [label]
        for task in tasks:
            stat, base = cells.get(task), baseline.get((condition, task))
            drop = ("" if label.startswith("centralized") or stat is None or base is None
                    else f" ({stat[0] - base[0]:+.3f})")
            row.append(fmt(stat, 3) + drop if task in cells else "")
        lines.append(row)
    return ["", "### Centralized vs federated", "", *_table(["setting", *tasks], lines), "",
            "Test accuracy of the best-on-validation prompt per task; in brackets the change from the "
            "centralized baseline on the same task (negative: the drop federated training costs). A "
            "heterogeneous run serves every task with one prompt."]


def _aggregation_numbers(results: dict[str, Any]) -> dict[str, float | None]:
    rounds = results.get("rounds") or []
    last = rounds[-1] if rounds else {}
    complexity, uid = last.get("aggregate_complexity") or {}, last.get("aggregate_uid") or {}
    failures = [r.get("aggregation_failure") for r in rounds]
    return {"test": results["final_test"]["best"]["mean"], "tokens": last.get("aggregate_tokens"),
            "entropy": complexity.get("entropy"), "ratio": complexity.get("compression_ratio"),
            "uid_mean": uid.get("mean"), "uid_var": uid.get("variance"),
            "fell_back": sum(f is not None and f != CONTEXT_OVERFLOW for f in failures), "overflowed": failures.count(CONTEXT_OVERFLOW)}


AGGREGATION_COLUMNS = (("test", "test (best)", 3), ("tokens", "final prompt tokens", 0),
                       ("entropy", "entropy (bits/char)", 2), ("ratio", "compression ratio", 3),
                       ("uid_mean", "UID mean", 2), ("uid_var", "UID var", 2),
                       ("fell_back", "merges fell back", 1), ("overflowed", "merges overflowed", 1))


def aggregation_comparison(groups: list[Group], fmt: Format) -> list[str]:
    """One row per federated group, methods side by side within each setting and task set."""
    federated = [g for g in groups if g.value("module") in ("homo_fed", "hetero_fed")]
    if len({g.value("aggregation") for g in federated}) < 2:
        return []
    def setting(group: Group) -> str:
        others = varying_label(group, federated, leave_out=("module", "tasks", "aggregation"))
        return f"{SETTINGS[group.value('module')]}, {group.value('tasks')}" + (f"; {others}" if others else "")

    rows = []
    for group in sorted(federated, key=lambda g: (setting(g), _method_rank(g.value("aggregation")))):
        numbers = [_aggregation_numbers(run.results) for run in group.runs]
        rows.append([setting(group), str(group.value("aggregation"))]
                    + [fmt(mean_std([n[key] for n in numbers]), decimals) for key, _, decimals in AGGREGATION_COLUMNS])
    header = ["setting, tasks", "aggregation", *[title for _, title, _ in AGGREGATION_COLUMNS]]
    return ["", "### Aggregation methods", "", *_table(header, rows), "",
            "Test accuracy (mean over the run's tasks) of the best prompt; the final global prompt's length, "
            "character entropy, zlib compression ratio (lower: more repetitive) and UID surprisal mean and "
            "variance (nats, nats²; n/a where the test engine gives no log-probabilities); merges per run whose "
            "reply was unusable (concatenation was used instead) or whose request did not fit the context window."]


def versus_tables(groups: list[Group], fmt: Format) -> list[str]:
    """Accuracy against each of local steps, clients and batch size that the groups vary."""
    parts = []
    titles = dict(GROUP_KEYS)
    for key, noun in VERSUS:
        # Only lines with two points or more: a setting that varies only between unlike runs (centralized and
        # federated differ in clients) makes no curve.
        lines = {label: points for label, points in versus_points(groups, key).items() if len(points) > 1}
        if not lines:
            continue
        values = sorted({value for points in lines.values() for value, _ in points})
        header = [titles[key], *lines]
        rows = [[str(value)] + [fmt(dict(points).get(value), 3) for points in lines.values()] for value in values]
        parts += ["", f"### Accuracy vs {noun}", "", *_table(header, rows), "",
                  f"Test accuracy (best prompt, mean over the run's tasks) against {noun}; one column per "
                  "combination of the other settings."]
    return parts


def paper_tables(groups: list[Group], fmt: Format) -> list[str]:
    """The markdown lines of every paper table these groups make."""
    return [*central_vs_federated(groups, fmt), *aggregation_comparison(groups, fmt), *versus_tables(groups, fmt)]


def judge_line(groups: list[Group]) -> str:
    """Which judge scored the runs (results.json's judge; runs before it was recorded used our grader)."""
    names = {"string": "our deterministic grader (--judge string)", "llm": "an LLM judge (--judge llm)"}
    used = {run.results.get("judge", "string") for g in groups for run in g.runs}
    judges = [j for j in names if j in used] + sorted(used - set(names))
    return "Scoring: " + " and ".join(names.get(j, j) for j in judges) + (
        " (runs differ: see the judge column)" if len(judges) > 1 else "") + "."
