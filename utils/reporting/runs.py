"""The runs a report covers: found below folders, read (results.json, config.yaml, estimate.json), grouped
by their settings (seeds of one setting form a group), and the numbers each run and group reports."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# (column, title) of the keys that always define a group.
GROUP_KEYS = (("module", "module"), ("tasks", "tasks"), ("aggregation", "aggregation"),
              ("local_steps", "local steps"), ("clients", "clients"), ("batch_size", "batch"))
# config.yaml settings that also separate groups; shown as columns only when they differ between runs.
EXTRA_KEYS = ("test_engine", "evaluation_engine", "partition", "dirichlet_alpha", "clients_per_round",
              "proximal_update", "optimizer", "momentum_window", "split_sizes", "max_epochs", "judge", "max_tokens",
              "leak_guard", "malicious_clients", "attack", "robust_aggregation")
# Shorter names of settings in plot legends.
SHORT_TITLES = {"split_sizes": "split", "test_engine": "test", "evaluation_engine": "eval",
                "clients_per_round": "clients/round", "dirichlet_alpha": "alpha", "max_epochs": "rounds"}
# (metric, column title, decimals)
METRICS = (("zero_shot_test", "zero-shot test", 3), ("best_val", "best val", 3),
           ("test_last", "test (last)", 3), ("test_best", "test (best)", 3),
           ("llm_calls", "calls made (cache hits included)", 0), ("llm_requests", "requests sent", 0),
           ("llm_tokens", "tokens", 0), ("wall_seconds", "wall s", 1),
           ("prompt_tokens", "prompt tokens", 0), ("uid_variance", "UID var", 2),
           ("leak_run", "copied run", 0), ("leak_share", "shingle share", 3))


class ReportError(ValueError):
    """Nothing to report, or a path that does not exist: one line, exit code 2."""


@dataclass
class Run:
    path: Path
    results: dict[str, Any]
    key: tuple[tuple[str, Any], ...]  # (name, value) pairs, GROUP_KEYS then the extras
    estimate: dict[str, Any] | None = None  # the estimate.json the run recorded at its start (utils.estimate.cost)

    @property
    def seed(self) -> Any:
        return self.results.get("settings", {}).get("seed")


@dataclass
class Group:
    key: tuple[tuple[str, Any], ...]
    runs: list[Run]

    def value(self, name: str) -> Any:
        return dict(self.key)[name]


# ---------------------------------------------------------------------------------- reading runs


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"{path} does not exist: give run folders or a folder that holds them")
        if (path / "results.json").is_file():
            found.append(path)
        else:
            found += sorted(p.parent for p in path.rglob("results.json"))
    return list(dict.fromkeys(found))


def _short_module(module: str) -> str:
    return module.removeprefix("train_")


def run_key(results: dict[str, Any], config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    settings = results.get("settings", {})
    base = {
        "module": _short_module(results["module"]),
        "tasks": "+".join(results["tasks"]),
        "aggregation": results.get("aggregate_method") or "-",
        "local_steps": settings.get("max_steps", config.get("max_steps")),
        "clients": len(results.get("clients") or []) or 1,
        "batch_size": settings.get("batch_size", config.get("batch_size")),
    }
    extras = {k: _hashable(config.get(k)) for k in EXTRA_KEYS}
    return tuple(base.items()) + tuple(extras.items())


def _hashable(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


def load_run(path: Path) -> Run:
    results = json.loads((path / "results.json").read_text(encoding="utf-8"))
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    estimate_path = path / "estimate.json"
    estimate = json.loads(estimate_path.read_text(encoding="utf-8")) if estimate_path.is_file() else None
    return Run(path, results, run_key(results, config or {}), estimate)


def load_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """The runs under `paths` and one note per folder that could not be read."""
    runs, notes = [], []
    for path in find_run_dirs(paths):
        try:
            runs.append(load_run(path))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            notes.append(f"skipped {path}: unreadable results ({type(exc).__name__}: {exc})")
    if not runs:
        raise ReportError("no finished run (a folder with results.json) under " + ", ".join(map(str, paths))
                          + ": run an experiment first, or wait for the runs to finish")
    return runs, notes


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    ordered = sorted(groups.items(), key=lambda item: tuple(str(v) for _, v in item[0]))
    return [Group(key, sorted(members, key=lambda r: str(r.seed))) for key, members in ordered]


# ---------------------------------------------------------------------------------- numbers


def run_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """The scalar numbers of one run that the table reports (None where the run has none)."""
    llm = results.get("llm", {})
    rounds = results.get("rounds") or []
    last = rounds[-1] if rounds else {}
    uid = last.get("aggregate_uid") or {}
    return {
        "zero_shot_test": results["zero_shot"]["test"]["mean"],
        "best_val": results["best"]["val"],
        "test_last": results["final_test"]["last"]["mean"],
        "test_best": results["final_test"]["best"]["mean"],
        # What the method costs (the same for runs that share a cache) and what reached the servers.
        "llm_calls": llm["calls"] + llm.get("cache_hits", 0) if "calls" in llm else None,
        "llm_requests": llm.get("calls"),
        "llm_tokens": (llm["prompt_tokens"] + llm["completion_tokens"]) if "prompt_tokens" in llm else None,
        "wall_seconds": results.get("wall_seconds"),
        "prompt_tokens": last.get("aggregate_tokens"),  # the final global prompt
        "uid_variance": uid.get("variance"),
        **_leak_maxima(rounds),
    }


def _leak_maxima(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """The largest leak any client's sent update showed over the run (None for runs made before the audit)."""
    audits = [r["leakage"] for r in rounds if r.get("leakage")]
    return {"leak_run": max((a["max_longest_run"] for a in audits), default=None),
            "leak_share": max((a["max_shingle_share"] for a in audits), default=None)}


def leak_of_round(entry: dict[str, Any]) -> float | None:
    return (entry.get("leakage") or {}).get("max_longest_run")


def mean_std(values: list[float | None]) -> tuple[float, float, int] | None:
    """Mean, sample standard deviation (0 for one value) and count of the values that exist."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std, len(present)


def summarise(group: Group) -> dict[str, Any]:
    per_run = [run_metrics(r.results) for r in group.runs]
    row: dict[str, Any] = dict(group.key)
    row["seeds"] = [r.seed for r in group.runs]
    row["runs"] = [str(r.path) for r in group.runs]
    for name, _, _ in METRICS:
        row[name] = mean_std([m[name] for m in per_run])
    return row


def per_task_test(group: Group) -> dict[str, tuple[float, float, int] | None]:
    tasks = group.runs[0].results["tasks"]
    return {t: mean_std([r.results["final_test"]["best"].get(t) for r in group.runs]) for t in tasks}


def series_label(group: Group, groups: list[Group], leave_out: tuple[str, ...] = ()) -> str:
    """varying_label, or the aggregation method where no setting tells the groups apart."""
    return varying_label(group, groups, leave_out) or str(group.value("aggregation"))


def varying_label(group: Group, groups: list[Group], leave_out: tuple[str, ...] = ()) -> str:
    """The settings (but those left out) that tell this group apart from the others, briefly ("" if none):
    values alone for module, tasks and aggregation, "title value" for the rest."""
    titles = dict(GROUP_KEYS)
    parts = []
    for key in [k for k, _ in GROUP_KEYS] + list(EXTRA_KEYS):
        if key in leave_out or len({g.value(key) for g in groups}) <= 1:
            continue
        value = group.value(key)
        if key == "tasks":
            value = str(value).replace("BBH_", "")  # the BBH subtask names say enough
        parts.append(str(value) if key in ("module", "tasks", "aggregation") else
                     f"{SHORT_TITLES.get(key, titles.get(key, key))} {value}")
    return ", ".join(parts)


def versus_points(groups: list[Group], key: str) -> dict[str, list[tuple[Any, tuple[float, float, int]]]]:
    """Final test accuracy (best prompt, mean over tasks) against one setting: per combination of the other
    settings (its series_label), the (value, mean ± std over seeds) points in the order of the values."""
    lines: dict[str, list[tuple[Any, tuple[float, float, int]]]] = {}
    for group in groups:
        stat = mean_std([run_metrics(r.results)["test_best"] for r in group.runs])
        if stat is not None:
            lines.setdefault(series_label(group, groups, leave_out=(key,)), []).append((group.value(key), stat))
    return {label: sorted(points, key=lambda p: p[0]) for label, points in lines.items()}
