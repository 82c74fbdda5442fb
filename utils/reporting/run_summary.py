"""The summary a run prints when it ends: its accuracies, rounds, LLM cost, failures and defences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

JUDGES = {"string": "string: our deterministic grader", "llm": "llm: the evaluation engine judges every answer"}


def _fmt(scores: dict[str, float] | None) -> str:
    if not scores:
        return "-"
    if len(scores) == 2:  # one task and its mean
        return f"{scores['mean']:.3f}"
    return f"{scores['mean']:.3f} (" + ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if k != "mean") + ")"


def _splits(results: dict[str, Any]) -> str:
    sizes = results.get("split_sizes") or {}
    if not sizes:
        return "-"
    return ", ".join(f"{task} {s['train']}/{s['val']}/{s['test']}" for task, s in sizes.items()) + " (train/val/test)"


def _context_line(results: dict[str, Any]) -> str:
    context = results.get("context") or {}
    windows = ", ".join(f"{name} {w['tokens']} ({w['source']})" for name, w in context.get("windows", {}).items())
    return (f"context        window {windows or '-'}; {context.get('shortened_requests', 0)} replies shortened, "
            f"{context.get('dropped_items', 0)} items left out, {context.get('overflow_replies', 0)} overflow "
            f"replies, {context.get('skipped_calls', 0)} calls skipped; no text is ever cut")


def merge_tree_note(tree: dict[str, Any] | None) -> str:
    """", merge 6+2+1 requests (3 levels)" and what went over the budget or was left out; "" without a tree."""
    if not tree:
        return ""
    levels = "+".join(map(str, tree["levels"])) or "0"
    extras = [f"{tree[key]} {what}" for key, what in (("retries", "asked again"), ("over_budget", "over budget"),
                                                        ("left_out", "prompts left out")) if tree.get(key)]
    extras += [f"{n} concatenated ({kind})" for kind, n in tree.get("failures", {}).items()]
    return (f", merge {levels} requests ({tree['depth']} level{'s' if tree['depth'] != 1 else ''})"
            + "".join(f", {extra}" for extra in extras))


def _defence_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    leak = results.get("leakage")
    if leak:
        lines.append(f"leakage        longest copied run {leak['max_longest_run']} words sent "
                     f"({leak['max_written_longest_run']} written), shingle share {leak['max_shingle_share']:.3f}; "
                     f"guard redacted {leak['redacted_updates']}, rejected {leak['rejected_updates']} updates")
    screen = results.get("screening")
    if screen:
        left_out = "; ".join(f"round {r}: {', '.join(c)}" for r, c in screen["left_out"].items() if c) or "none"
        lines.append(f"screening      {screen['requests']} answers ({screen['llm_calls']} LLM calls); "
                     f"left out {left_out}")
    return lines


def _by_kind(failures: dict[str, int], prefix: str) -> str:
    counts = {k[len(prefix):]: n for k, n in failures.items() if k.startswith(prefix)}
    named = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
    return f"{sum(counts.values())}" + (f" ({named})" if named else "")


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    llm = results["llm"]
    ff = results["format_failures"]
    lines = [
        f"== {results['module']} on {', '.join(results['tasks'])} "
        f"({results['aggregate_method'] or 'no aggregation'}), {results['rounds_completed']} rounds ==",
        f"splits         {_splits(results)}",
        f"scoring        {JUDGES.get(results.get('judge', 'string'), results.get('judge'))}",
        f"zero-shot      val {_fmt(results['zero_shot']['val'])}   test {_fmt(results['zero_shot']['test'])}",
        *[f"round {r['round']:<3}      val {_fmt(r['val'])}   aggregate {r['aggregate_tokens']} tokens, "
          f"{r['accepted_steps']}/{r['steps']} steps kept, {r.get('skipped_steps', 0)} skipped (context)"
          f"{merge_tree_note(r.get('merge_tree'))}" for r in results["rounds"]],
        f"best (round {results['best']['round']})  val {results['best']['val']:.3f}",
        f"final test     last {_fmt(results['final_test']['last'])}   best {_fmt(results['final_test']['best'])}",
        f"LLM            {llm['calls']} calls, {llm['prompt_tokens']}+{llm['completion_tokens']} tokens, "
        f"cache {llm['cache_hits']} hits / {llm['cache_misses']} misses, {llm['retries']} retries",
        f"format fails   optimizer {_by_kind(ff, 'optimizer_')}; merge {_by_kind(ff, 'aggregation_')}; "
        f"judge {ff['judge']}; steps skipped (context) {ff['skipped_steps']}",
        _context_line(results),
        *_defence_lines(results),
        f"wall time      {results['wall_seconds']:.1f} s",
        f"outputs        {run_dir}",
    ]
    print("\n".join(lines), flush=True)
