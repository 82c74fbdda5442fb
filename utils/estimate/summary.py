"""Estimates as text: one run's table (main.py --estimate), and a grid's total with its costliest cells.

    python -m utils.estimate.summary FOLDER [--top N]

FOLDER holds one estimate JSON per grid cell (what `main.py --estimate --estimate_json FILE` writes);
the launchers in scripts/ call this after estimating every cell of their grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from utils.config import UsageError
from utils.federated.experiment import Experiment
from utils.run_config import RunConfig

from .cost import ESTIMATE_FILE, Estimate, estimate_run, write_estimate

logger = logging.getLogger(__name__)

PHASE_WIDTH = 28
ENGINE_WIDTH = 18


def _int(value: float) -> str:
    return f"{round(value):,}"


def _tokens(value: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= 10 * size:
            return f"{value / size:.1f}{unit}"
    return _int(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "time unknown"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"≈ {seconds / size:.1f} {unit}"
    return f"≈ {seconds:.0f} s"


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}" if usd >= 0.01 else f"${usd:.4f}"


def _row(phase: str, engine: str, record: dict[str, Any]) -> str:
    return (f"{phase:<{PHASE_WIDTH}} {engine:<{ENGINE_WIDTH}} {_int(record['calls']):>8} {_int(record['cached']):>7} "
            f"{_int(record['prompt_tokens']):>14} {_int(record['completion_tokens']):>18}")


def _header(e: Estimate) -> str:
    shape = f"{e.rounds} rounds" + (f" (resuming after round {e.first_round - 1})" if e.first_round > 1 else "")
    if e.module != "train_centralized":
        shape += f", {e.clients} clients ({e.clients_per_round} per round), {e.aggregate_method}"
    return f"== estimate: {e.module} on {', '.join(e.tasks)}, {shape} =="


def _time_line(e: Estimate) -> str:
    if e.seconds is None:
        missing = [name for name, eng in e.engines.items() if eng.seconds_per_call is None and e.totals[name]["calls"]]
        return (f"time      unknown: no finished run of {', '.join(missing)} to measure seconds per call from; "
                "give --estimate_latency SECONDS")
    parts = [f"{_int(e.totals[name]['calls'])} calls / {e.max_concurrency} concurrent x "
             f"{eng.seconds_per_call or 0:.3g} s per call ({eng.latency_source})"
             for name, eng in e.engines.items() if e.totals[name]["calls"]]
    return f"time      {duration(e.seconds)}: " + ("; ".join(parts) or "nothing to send")


def _money_line(e: Estimate) -> str:
    parts = []
    for name, eng in e.engines.items():
        if eng.price is None:
            parts.append(f"{name}: no known price (give --price_in/--price_out USD per million tokens)")
        else:
            parts.append(f"{name}: {_money(eng.usd)} (${eng.price['input_per_million']:.2f} in / "
                         f"${eng.price['output_per_million']:.2f} out per 1M tokens, {eng.price['source']})")
    return "money     " + ("total " + _money(e.usd) + "; " if e.usd is not None else "") + "; ".join(parts)


def format_estimate(e: Estimate) -> str:
    lines = [_header(e), f"{'phase':<{PHASE_WIDTH}} {'engine':<{ENGINE_WIDTH}} {'calls':>8} {'cached':>7} "
                         f"{'prompt tokens':>14} {'completion tokens':>18}"]
    lines += [_row(r["phase"], r["engine"], r) for r in e.phases]
    lines += [_row("UID measures (logprobs)", r["engine"], r) for r in e.uid]
    lines += [_row("total (chat calls)", name, record) for name, record in e.totals.items()]
    lines += [f"  if {c['what']}: +{_int(c['calls'])} calls, +{_int(c['tokens'])} tokens" for c in e.conditional]
    lines.append(f"assumes   {e.assumptions}")
    for name, eng in e.engines.items():
        lines.append(f"tokens    {name}: prompt tokens counted with {eng.tokenizer}; completion tokens from "
                     f"{eng.completion_source}")
    lines += [f"cache     {e.cache_note}", _time_line(e), _money_line(e), *e.notes]
    return "\n".join(lines)


def print_estimate(args: RunConfig, exp: Experiment, run_dir: Path) -> None:
    """main.py --estimate: the table on stdout, and with --estimate_json the record in that file."""
    estimate = estimate_run(args, exp, run_dir)
    print(format_estimate(estimate), flush=True)
    if args.estimate_json:
        try:
            write_estimate(estimate, Path(args.estimate_json))
        except OSError as exc:
            raise UsageError(f"--estimate_json {args.estimate_json} cannot be written ({exc.strerror}): "
                             "choose a file in a folder you can write to") from None


def record_estimate(args: RunConfig, exp: Experiment, run_dir: Path, cache_before: float | None = None) -> None:
    """Every run keeps its estimate beside its results: utils.reporting.report compares them, and later estimates of
    the same engine calibrate against them. A failure here costs the comparison, never the run. cache_before: when
    the run started (a time.time()), for an estimate made while it runs: the cache as it was then."""
    try:
        write_estimate(estimate_run(args, exp, run_dir, cache_before), run_dir / ESTIMATE_FILE)
    except Exception as exc:  # noqa: BLE001 - the run itself does not depend on its estimate
        logger.warning("no estimate recorded for this run: %s", exc)


# ---------------------------------------------------------------- a grid of runs


def _cell_cost(record: dict[str, Any]) -> tuple[float, float, float]:
    """Sort key of a cell: money, then time, then tokens."""
    total = record["total"]
    return (record.get("usd") or 0.0, record.get("seconds") or 0.0, total["prompt_tokens"] + total["completion_tokens"])


def _cell_line(label: str, record: dict[str, Any]) -> str:
    total = record["total"]
    money = f", {_money(record['usd'])}" if record.get("usd") is not None else ""
    return (f"{label}: {_int(total['calls'])} calls ({_int(total['cached'])} cached), "
            f"{_tokens(total['prompt_tokens'])} prompt + {_tokens(total['completion_tokens'])} completion tokens, "
            f"{duration(record.get('seconds'))}{money}")


def grid_summary(cells: dict[str, dict[str, Any]], top: int = 5) -> str:
    """The total of the cells' estimates and the `top` costliest cells."""
    total = {"calls": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for record in cells.values():
        for key in total:
            total[key] += record["total"][key]
    unknown_time = [name for name, r in cells.items() if r.get("seconds") is None and r["total"]["calls"]]
    priced = [r["usd"] for r in cells.values() if r.get("usd") is not None]
    summed = {"total": total, "seconds": None if unknown_time else sum(r.get("seconds") or 0.0 for r in cells.values()),
              "usd": sum(priced) if priced else None}
    lines = [f"== estimate of the grid: {len(cells)} runs ==", _cell_line("total", summed)]
    if unknown_time:
        lines.append(f"  (time unknown for {len(unknown_time)} runs: no measured seconds per call; give "
                     "--estimate_latency SECONDS)")
    if priced and len(priced) < len(cells):
        lines.append(f"  (money covers {len(priced)} of {len(cells)} runs: the others' engines have no known price)")
    ranked = sorted(cells.items(), key=lambda item: _cell_cost(item[1]), reverse=True)[:top]
    lines.append(f"most expensive {len(ranked)}:")
    lines += [_cell_line(f"  {i}. {name}", record) for i, (name, record) in enumerate(ranked, 1)]
    return "\n".join(lines)


def load_cells(folder: Path) -> dict[str, dict[str, Any]]:
    cells = {}
    for path in sorted(folder.rglob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        cells[str(path.relative_to(folder).with_suffix(""))] = record
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.estimate.summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=5, help="how many of the costliest cells to list")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder of estimates", file=sys.stderr)
        return 2
    cells = load_cells(args.folder)
    print(grid_summary(cells, args.top) if cells else "nothing to estimate: every run of the grid is done already")
    return 0


if __name__ == "__main__":
    sys.exit(main())
