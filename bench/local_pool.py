"""The embedded `local` engine with one llama.cpp server vs a pool of them, both set-ups in one run.

    python bench/local_pool.py                       # 1 server vs the default pool (one per core, at most 4)
    python bench/local_pool.py --servers 1 2 --no-quickstart

For each set-up: tokens/s of GSM8K questions (temperature 0, --max_tokens each) with 1 and 8 requests in
flight, the peak memory (RSS high-water mark) of the servers, and the quickstart's wall time (a child
`python main.py --config configs/quickstart.yaml --local_servers N` with a cold cache). Then whether the
set-ups gave the same replies, and the same quickstart prompts and accuracies. The 1-minute load average
is printed beside every figure: on a shared machine it says how far to trust it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgrad.engine import get_engine  # noqa: E402
from textgrad.serving.llama_process import pool_size  # noqa: E402
from textgrad.serving.runtime import current_runtime  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_TEST = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def questions(count: int) -> list[str]:
    if GSM8K_TEST.is_file():
        lines = GSM8K_TEST.read_text(encoding="utf-8").splitlines()[:count]
        return [json.loads(line)["question"] for line in lines]
    return [f"A shop sells {n} apples a day for {n + 2} days. How many apples does it sell?" for n in range(count)]


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def peak_rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024


def throughput(prompts: list[str], in_flight: int, max_tokens: int, cache_dir: str) -> tuple[float, list[str]]:
    """(completion tokens per second, replies) of prompts answered with `in_flight` requests at a time."""
    engine = get_engine("local", cache_dir=cache_dir, use_cache=False)
    before = engine.stats.as_dict()["completion_tokens"]
    started = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        replies = list(pool.map(lambda q: engine.generate(q, max_tokens=max_tokens), prompts))
    seconds = time.monotonic() - started
    return (engine.stats.as_dict()["completion_tokens"] - before) / seconds, replies


def quickstart(servers: int, workdir: Path, extra: list[str]) -> tuple[float, dict[str, object]]:
    """(wall seconds, what the run decided: accuracies and every prompt) of the quickstart on `servers`."""
    name = f"quickstart-{servers}"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_BASE_URL", "LOCAL_SERVERS")}
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "--config", str(REPO_ROOT / "configs/quickstart.yaml"),
                    "--local_servers", str(servers), "--cache_dir", str(workdir / f"cache-{name}"), "--comet_mode",
                    "disabled", "--output_dir", str(workdir), "--run_name", name, *extra],
                   cwd=workdir, env=env, check=True, capture_output=True)
    seconds = time.monotonic() - started
    run = workdir / name
    results = json.loads((run / "results.json").read_text())
    prompts = {str(p.relative_to(run)): p.read_text() for p in sorted((run / "prompts").rglob("*")) if p.is_file()}
    return seconds, {"results": results, "prompts": prompts}


def accuracies(results: object) -> object:
    """The accuracy figures of results.json, wherever they sit (timings and paths left out)."""
    if isinstance(results, dict):
        return {k: accuracies(v) for k, v in results.items() if "acc" in k or isinstance(v, (dict, list))}
    if isinstance(results, list):
        return [accuracies(v) for v in results]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=None,
                        help="set-ups to compare (default: 1 and the default pool size)")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--no-quickstart", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--quickstart_args", default="",
                        help='main.py flags added to the quickstart, e.g. "--split_sizes 3,2,2 --max_epochs 1"')
    opts = parser.parse_args()
    setups = opts.servers or [1, pool_size()]
    runtime = current_runtime()
    prompts = questions(opts.questions)
    replies: dict[int, list[str]] = {}
    runs: dict[int, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-local-pool-") as tmp:
        workdir = Path(tmp)
        for servers in setups:
            runtime.configure(local_servers=servers)
            runtime.embedded.stop()
            started = time.monotonic()
            runtime.ensure_embedded()
            print(f"servers={servers}: ready in {time.monotonic() - started:.1f} s (load {load()})", flush=True)
            cache = str(workdir / f"cache-{servers}")
            for in_flight in () if opts.no_throughput else (1, 8):
                subset = prompts[: max(2, opts.questions // 2)] if in_flight == 1 else prompts
                rate, answered = throughput(subset, in_flight, opts.max_tokens, cache)
                if in_flight == 8:
                    replies[servers] = answered
                print(f"servers={servers}: {rate:.1f} tokens/s with {in_flight} in flight "
                      f"({len(subset)} questions, load {load()})", flush=True)
            pids = [int(s["pid"]) for s in runtime.embedded.info()["servers"]]
            print(f"servers={servers}: peak RSS of the servers {peak_rss_mib(pids):.0f} MiB", flush=True)
            runtime.embedded.stop()
            if not opts.no_quickstart:
                seconds, runs[servers] = quickstart(servers, workdir, shlex.split(opts.quickstart_args))
                print(f"servers={servers}: quickstart {seconds:.1f} s wall (load {load()})", flush=True)
    first = setups[0]
    for servers in setups[1:]:
        if replies:
            same = replies[servers] == replies[first]
            print(f"replies at 8 in flight, {servers} vs {first} servers: {'same' if same else 'DIFFERENT'}")
        if runs:
            a, b = runs[first], runs[servers]
            print(f"quickstart {servers} vs {first} servers: prompts "
                  f"{'same' if a['prompts'] == b['prompts'] else 'DIFFERENT'}, accuracies "
                  f"{'same' if accuracies(a['results']) == accuracies(b['results']) else 'DIFFERENT'}")
            if accuracies(a["results"]) != accuracies(b["results"]):
                print(json.dumps({first: accuracies(a["results"]), servers: accuracies(b["results"])}, indent=1))


if __name__ == "__main__":
    main()
