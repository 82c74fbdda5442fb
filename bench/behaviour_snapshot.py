"""What a seeded run on the bench server finds and costs, as one JSON object: proof a refactor moved nothing.

    python bench/behaviour_snapshot.py [homo|hetero|centralized]

Runs `python main.py` in-process (homo: train_homo_fed, 3 clients, 2 rounds of 2 steps, summarization;
hetero: train_hetero_fed on the three synthetic tasks, sum_uid; centralized; no response cache) against bench/fake_server, whose replies are a pure function of the request, and
prints the accuracies, the prompts (their SHA-256 and the final one in full), the run's LLM call and
token counts and the server's request counts by kind. tests/test_behaviour_pinned.py compares this with
the values printed before the engine layer was split (issue 14).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

ENGINE = "vllm-fake-model"
COMMON_ARGS = ["--max_epochs", "2", "--max_steps", "2", "--batch_size", "2", "--seed", "7",
               "--test_engine", ENGINE, "--evaluation_engine", ENGINE, "--no_cache", "--comet_mode", "disabled",
               "--run_name", "pinned"]
# One seeded run per module; the heterogeneous one merges with UID guidance, so all three merges but
# concat (which makes no call) are pinned somewhere.
RUNS: dict[str, list[str]] = {
    "homo": ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--homo_split_num", "3",
             "--aggregate_method", "summarization", "--split_sizes", "12,8,8", *COMMON_ARGS],
    "hetero": ["--module", "train_hetero_fed", "--task", "synthetic_object_counting", "synthetic_word_sorting",
               "synthetic_multistep_arithmetic", "--aggregate_method", "sum_uid", "--split_sizes", "6,6,6",
               *COMMON_ARGS],
    "centralized": ["--module", "train_centralized", "--task", "synthetic_multistep_arithmetic",
                    "--split_sizes", "8,6,6", *COMMON_ARGS],
}
RUN_ARGS = RUNS["homo"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def snapshot(work_dir: Path, run: str = "homo") -> dict[str, Any]:
    """Run the seeded experiment `run` (a key of RUNS) in work_dir against a fresh bench server and
    describe what it did."""
    from bench.fake_server import FakeServer
    from main import main

    with FakeServer(latency=0.0, slots=16) as server:
        previous = os.environ.get("VLLM_BASE_URL")
        os.environ["VLLM_BASE_URL"] = server.base_url
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the run's summary; stdout carries the JSON
                code = main([*RUNS[run], "--output_dir", str(work_dir)])
        finally:
            if previous is None:
                os.environ.pop("VLLM_BASE_URL", None)
            else:
                os.environ["VLLM_BASE_URL"] = previous
        stats = server.stats
    if code != 0:
        raise RuntimeError(f"the seeded run failed with exit code {code}")
    run_dir = work_dir / "pinned"
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    rounds = results["rounds"]
    prompts = {str(p.relative_to(run_dir / "prompts")): _sha(p.read_text(encoding="utf-8"))
               for p in sorted((run_dir / "prompts").rglob("*.txt"))}
    return {
        "zero_shot": results["zero_shot"],
        "val": [r["val"] for r in rounds],
        "client_train_accuracy": [r["client_train_accuracy"] for r in rounds],
        "best": {"round": results["best"]["round"], "val": results["best"]["val"],
                 "prompt_sha": _sha(results["best"]["prompt"])},
        "final_test": results["final_test"],
        "final_prompt": results["final_prompt"],
        "prompt_files": prompts,
        "aggregate_tokens": [r["aggregate_tokens"] for r in rounds],
        "client_prompt_tokens": [r["client_prompt_tokens"] for r in rounds],
        "aggregate_uid_tokens": [(r.get("aggregate_uid") or {}).get("tokens") for r in rounds],
        "steps": results["steps"],
        "format_failures": results["format_failures"],
        "llm": {k: results["llm"][k] for k in ("calls", "prompt_tokens", "completion_tokens", "cache_hits",
                                                "cache_misses", "retries", "failures")},
        "server_requests": stats["requests"],
        "server_requests_by_kind": dict(sorted(stats["requests_by_kind"].items())),
        "server_logprob_requests": stats["logprob_requests"],
    }


def main() -> None:
    run = sys.argv[1] if len(sys.argv) > 1 else "homo"
    if run not in RUNS:
        raise SystemExit(f"usage: python bench/behaviour_snapshot.py [{'|'.join(RUNS)}]")
    with tempfile.TemporaryDirectory(prefix="fedtextgrad-snapshot-") as tmp:
        print(json.dumps(snapshot(Path(tmp), run), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
