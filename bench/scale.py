"""Scale benchmark: homogeneous GSM8K runs of 10, 50, 200 and 1000 clients (1 round, 1 step) against the bench
server with a 4096-token window, and what the merge and the context budget did at each size.

    python bench/scale.py [--clients 10,50,200,1000] [--latency 0.02] [--repeats 2] [--data_dir ../shared/data]

The bench server runs in this process with `distinct_edits` (every optimizer edit its own, as a real model's,
so N clients return about N different prompts) and keeps every request it answers; each run is
`python main.py` in a child process of its own, so its peak RSS is its own. Per size: LLM calls, wall time,
calls per second (chat calls; the UID log-probability requests of the prompts are counted
beside them), peak RSS, the merge tree (requests per level), requests whose reply was shortened,
overflowed or skipped and items left out (all must be 0), texts cut (a shortening mark in any request, or a
kept client prompt missing from every merge request: must be 0), and the share of clients' kept edits that
reach a merge request whole. Targets are printed under the table, not asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from bench.fake_server import FakeServer  # noqa: E402
from bench.fake_server.replies import request_kind  # noqa: E402

WINDOW = 4096
PROMPT_BLOCK = re.compile(r"<PROMPT>\n(.*?)\n</PROMPT>", re.DOTALL)
CUT_MARK = re.compile(r"\[\.\.\.|\.\.\.\]|tokens cut|items dropped")
TARGET_RSS_MB = 500


def run_argv(clients: int, data_dir: str, out: Path, concurrency: int) -> list[str]:
    return ["--module", "train_homo_fed", "--task", "GSM8K", "--data_dir", data_dir, "--homo_split_num", str(clients),
            "--split_sizes", f"{2 * clients},20,20", "--max_steps", "1", "--batch_size", "2", "--max_epochs", "1",
            "--aggregate_method", "summarization", "--max_context", str(WINDOW), "--test_engine", "vllm-fake-model",
            "--evaluation_engine", "vllm-fake-model", "--do_not_run_larger_model", "--no_cache",
            "--max_concurrency", str(concurrency), "--comet_mode", "disabled", "--output_dir", str(out),
            "--run_name", f"clients{clients}"]


def child(argv: list[str]) -> None:
    """One run in this (child) process; its exit code and peak RSS as the last line of stdout."""
    from main import main

    code = main(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"code": code, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime}))


def measure(server: FakeServer, clients: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    server.reset_stats()
    argv = run_argv(clients, args.data_dir, out, args.max_concurrency)
    env_url = {"VLLM_BASE_URL": server.base_url, "FEDTEXTGRAD_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(argv)],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**_environment(), **env_url})
    report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"code": done.returncode}
    if report["code"] != 0:
        raise SystemExit(f"the run of {clients} clients failed:\n{done.stderr[-3000:]}")
    run_dir = out / f"clients{clients}"
    results = json.loads((run_dir / "results.json").read_text())
    bodies = server.chat_requests
    stats = server.stats
    merge_inputs = {p for body in bodies if request_kind(body["messages"]) == "merge"
                    for p in PROMPT_BLOCK.findall(body["messages"][-1]["content"])}
    kept = kept_prompts(run_dir)
    reached = sum(prompt in merge_inputs for prompt in kept)
    marked = sum(any(CUT_MARK.search(str(m.get("content") or "")) for m in body["messages"]) for body in bodies)
    context = results["context"]
    tree = results["rounds"][0].get("merge_tree") or {"levels": [], "depth": 0}
    return {
        "clients": clients, "calls": results["llm"]["calls"], "logprob_requests": stats["logprob_requests"],
        "wall": results["wall_seconds"], "peak_rss_mb": report["peak_rss_mb"], "cpu": report["cpu"],
        "levels": tree["levels"], "depth": tree["depth"], "distinct": tree.get("inputs", 0),
        "over_budget": tree.get("over_budget", 0),
        "not_fitting": (context["shortened_requests"], context["overflow_replies"] + stats["context_rejections"],
                        context["skipped_calls"], context["dropped_items"]),
        "cut": marked + len(kept) - reached, "kept": len(kept), "reached": reached,
        "aggregate_tokens": results["rounds"][0]["aggregate_tokens"], "budget": results["max_prompt_tokens"],
    }


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VLLM_", "COMET_"))}


def kept_prompts(run_dir: Path) -> list[str]:
    """The prompts the clients whose step was kept sent (after the leak guard), as saved in the run folder."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kept = sorted({e["client"] for e in events if e["type"] == "step" and e["accepted"]})
    return [(run_dir / "prompts" / "round_001" / f"client_{c}.txt").read_text().strip() for c in kept]


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    header = ("clients", "LLM calls (+UID log-prob requests)", "wall s", "calls/s", "CPU ms/call", "peak RSS MB",
              "merge levels", "depth", "shortened/overflowed/skipped/left out", "cut texts", "kept edits in a merge",
              "global prompt")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        levels = "+".join(map(str, r["levels"])) or "-"
        lines.append("| " + " | ".join([
            str(r["clients"]), f"{r['calls']} (+{r['logprob_requests']})", f"{r['wall']:.1f}",
            f"{r['calls'] / r['wall']:.0f}", f"{1000 * r['cpu'] / r['calls']:.1f}",
            f"{r['peak_rss_mb']:.0f}", f"{levels} ({r['distinct']} prompts)", str(r["depth"]),
            "/".join(map(str, r["not_fitting"])), str(r["cut"]),
            f"{r['reached']}/{r['kept']} = {100 * r['reached'] / max(1, r['kept']):.0f}%",
            f"{r['aggregate_tokens']} tokens (budget {r['budget']})"]) + " |")
    print(f"GSM8K, 1 round, 1 step, batch 2, summarization, {WINDOW}-token window; bench server latency "
          f"{args.latency} s, {args.slots} slots; --max_concurrency {args.max_concurrency}; the fastest of "
          f"{args.repeats} runs per size\n")
    print("\n".join(lines))
    first, last = rows[0], rows[-1]
    growth = (last["wall"] / first["wall"]) / (last["calls"] / first["calls"])
    print(f"\ntargets: {last['clients']} clients under {TARGET_RSS_MB} MB peak RSS: {last['peak_rss_mb']:.0f} MB; "
          f"wall time growing no faster than calls ({first['clients']} -> {last['clients']} clients: wall x"
          f"{last['wall'] / first['wall']:.1f} for calls x{last['calls'] / first['calls']:.1f}, ratio {growth:.2f}, "
          f"target <= 1); 0 texts cut: {sum(r['cut'] for r in rows)}; 0 requests shortened, overflowed, skipped "
          f"or left out: {sum(sum(r['not_fitting']) for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="10,50,200,1000", help="client counts, comma-separated")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request at the bench server")
    parser.add_argument("--slots", type=int, default=16, help="requests the bench server serves at once")
    parser.add_argument("--max_concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each size; the table shows the fastest")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder with gsm8k/train.jsonl and test.jsonl")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, in a process of its own
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    try:
        sizes = [int(part) for part in args.clients.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2:
        parser.exit(2, f"error: --clients {args.clients!r} is not a list of client counts of 2 or more, "
                       "such as 10,50,200,1000\n")
    if not (Path(args.data_dir) / "gsm8k" / "train.jsonl").is_file():
        parser.exit(2, f"error: --data_dir {args.data_dir} holds no gsm8k/train.jsonl: point it at the shared data\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtextgrad-scale-") as out, \
            FakeServer(latency=args.latency, slots=args.slots, max_context=WINDOW, distinct_edits=True,
                       prompts_kept=1_000_000) as server:
        for clients in sizes:  # the fastest of --repeats runs: the machine is shared, the noise is the others'
            tries = [measure(server, clients, args, Path(out) / f"try{n}") for n in range(args.repeats)]
            rows.append(min(tries, key=lambda row: row["wall"]))
            walls = ", ".join(f"{t['wall']:.1f}" for t in tries)
            print(f"{clients} clients: {rows[-1]['calls']} calls in {walls} s", file=sys.stderr)
    print_table(rows, args)


if __name__ == "__main__":
    main()
