"""The summary a run prints when it ends: its accuracies, rounds, LLM cost, failures and defences, the
prompt before and after, the accuracy change, and a plain sentence when no round improved on the start."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from utils.run_config import RunConfig

JUDGES = {"string": "string: our deterministic grader", "llm": "llm: the evaluation engine judges every answer"}
# What the sentence after a run that improved nothing suggests: capable models behind an API.
CAPABLE_ENGINES = ("--test_engine", "gpt-4o-mini", "--evaluation_engine", "gpt-4o")
PROMPT_WIDTH = 100


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


def _first_line(text: str) -> str:
    """The prompt's first line, quoted, cut to PROMPT_WIDTH characters; "..." says there is more."""
    lines = [line.strip() for line in text.strip().splitlines()]
    first = lines[0] if lines else ""
    cut = first if len(first) <= PROMPT_WIDTH else first[:PROMPT_WIDTH].rstrip()
    return f'"{cut}"' + (" ..." if cut != first or len(lines) > 1 else "")


def _prompt_lines(results: dict[str, Any], run_dir: Path) -> list[str]:
    """The starting and the final prompt (and the best, where it is neither), each with its file."""
    def path(round_index: int) -> Path:
        return run_dir / "prompts" / f"round_{round_index:03d}" / "global.txt"

    last, best = results["rounds_completed"], results["best"]["round"]
    lines = [f"prompt before  {_first_line(results['starting_prompt'])} ({path(0)})",
             f"prompt after   {_first_line(results['final_prompt'])} ({path(last)})"]
    if best not in (0, last):
        lines.append(f"best prompt    round {best}: {_first_line(results['best']['prompt'])} ({path(best)})")
    return lines


def _change(before: float, after: float) -> str:
    return f"{before:.3f} -> {after:.3f} ({after - before:+.3f})"


def _questions(results: dict[str, Any], split: str) -> str:
    sizes = results.get("split_sizes") or {}
    count = sum(s[split] for s in sizes.values())
    return f"{count} questions" + (f" of {len(sizes)} tasks (the mean of their accuracies)" if len(sizes) > 1 else "")


def _accuracy_change(results: dict[str, Any]) -> str:
    start, final = results["zero_shot"]["test"]["mean"], results["final_test"]
    return (f"change         test {_change(start, final['last']['mean'])} with the final prompt, "
            f"{_change(start, final['best']['mean'])} with the best, on {_questions(results, 'test')}")


def rerun_command(args: RunConfig) -> str:
    """The command that runs the same experiment against capable models."""
    if args.config:
        flags = ["--config", args.config]
    else:
        flags = ["--module", str(args.module), "--task", *args.task]
        flags += ["--data_dir", args.data_dir] if args.data_dir else []
        flags += ["--split_sizes", ",".join(map(str, args.split_sizes))] if args.split_sizes else []
    return shlex.join(["python", "main.py", *flags, *CAPABLE_ENGINES])


def verdict(results: dict[str, Any], args: RunConfig) -> str | None:
    """One plain sentence when no round's prompt validated better than the starting prompt; None otherwise."""
    if results["best"]["round"] != 0 or not results["rounds"]:
        return None
    val = results["zero_shot"]["val"]["mean"]
    sentence = (f"result         no round improved on the starting prompt (validation {val:.3f} on "
                f"{_questions(results, 'val')}, never beaten)")
    if "local" not in (args.test_engine, args.evaluation_engine):
        return sentence + "; more rounds or steps (--rounds, --max_steps) or a stronger evaluation engine may help"
    return (sentence + "; the packaged 135M model is a smoke test, not a research model, so for a result worth "
            f"reading run it against a capable server, e.g. with OPENAI_API_KEY set: {rerun_command(args)} "
            "(or your own vLLM, SGLang or Ollama server: docs/engines.md)")


def print_summary(results: dict[str, Any], run_dir: Path, args: RunConfig) -> None:
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
        _accuracy_change(results),
        *_prompt_lines(results, run_dir),
        f"LLM            {llm['calls']} calls, {llm['prompt_tokens']}+{llm['completion_tokens']} tokens, "
        f"cache {llm['cache_hits']} hits / {llm['cache_misses']} misses, {llm['retries']} retries",
        f"format fails   optimizer {_by_kind(ff, 'optimizer_')}; merge {_by_kind(ff, 'aggregation_')}; "
        f"judge {ff['judge']}; steps skipped (context) {ff['skipped_steps']}",
        _context_line(results),
        *_defence_lines(results),
        f"wall time      {results['wall_seconds']:.1f} s",
        f"outputs        {run_dir}",
        *([] if args.plots else [f"plots          python -m utils.reporting.plots {run_dir}"]),
        *filter(None, [verdict(results, args)]),  # last, where the eye lands
    ]
    print("\n".join(lines), flush=True)
