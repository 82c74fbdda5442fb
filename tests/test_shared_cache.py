"""Two runs at once on one --cache_dir: no broken entry, no lost entry."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run_helpers import final_numbers, main_env, run_args, run_main

from bench.fake_server import FakeServer

# Same task and seed: both runs ask the same zero-shot and round-1 questions at about the same time (the
# same cache entries may be written twice at once); the aggregation differs, so later requests differ.
BASE = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "9,4,4",
        "--homo_split_num", "3", "--max_epochs", "2", "--max_steps", "1", "--seed", "5", "--max_concurrency", "16"]
RUNS = {"summarize": ["--aggregate_method", "summarization"], "concat": ["--aggregate_method", "concat"]}


def run_both(server: FakeServer, out: Path, cache: Path, suffix: str) -> dict[str, dict]:
    def one(name: str) -> dict:
        done = run_main(run_args(out, name + suffix, cache, *BASE, *RUNS[name]), main_env(server.base_url))
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / (name + suffix) / "results.json").read_text())

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(RUNS, pool.map(one, RUNS), strict=True))


def test_two_runs_at_once_share_one_cache_without_corruption_or_loss(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with FakeServer(latency=0.01, slots=4) as server:
        first = run_both(server, tmp_path / "out", cache, "")
        seen = server.stats["prompts_seen"]
        requests = server.stats["requests"]

        files = [p for p in cache.rglob("*") if p.is_file()]
        assert not [p for p in files if p.suffix != ".json"], "a temporary file was left in the cache"
        entries = [json.loads(p.read_text()) for p in files]  # every entry is whole JSON
        replies = [e for e in entries if isinstance(e.get("text"), str)]
        logprobs = [e for e in entries if isinstance(e.get("logprobs"), list)]  # the UID measures' requests
        assert len(replies) + len(logprobs) == len(entries)
        # One reply entry per distinct chat request the server answered: nothing lost, nothing doubled.
        # (Whether both runs sent a request or one found the other's answer depends on their timing.)
        distinct = {json.dumps(request, sort_keys=True) for request in seen}
        assert len(seen) == requests and len(replies) == len(distinct) > 0

        server.reset_stats()
        again = run_both(server, tmp_path / "out", cache, "-again")
        # Every answer, and every log-probability, came from the shared cache.
        assert server.stats["requests"] == server.stats["logprob_requests"] == 0
    for name in RUNS:
        assert again[name]["llm"]["cache_misses"] == 0 < again[name]["llm"]["cache_hits"]
        assert final_numbers(again[name]) == final_numbers(first[name])
