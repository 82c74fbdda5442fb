"""What leaves a client, and what one poisoned client does, measured on the bench server.

    python bench/defences.py [--quote_rate 0.3] [--rounds 3] [--seed 42]

1. Leakage: train_homo_fed (3 clients) on a bench server whose optimizer copies a question it was shown
   into the prompt in --quote_rate of its replies, once per --leak_guard (off, redact, reject); per
   round the largest longest-copied-run and 8-word-shingle share over clients, as written by the
   optimizer and as sent, and how many updates the guard redacted or rejected.
2. Poisoning: 4 clients, 1 of them injecting a fixed wrong answer, summarization; validation accuracy
   per round with --robust_aggregation none and screen, and what screening cost in answers and LLM calls.
Every run has a cold response cache, so calls are real requests to the bench server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fake_server import FakeServer  # noqa: E402
from main import main as main_cli  # noqa: E402

ENGINE = "vllm-fake-model"


def run(workdir: Path, name: str, flags: list[str]) -> dict[str, Any]:
    argv = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--test_engine", ENGINE,
            "--evaluation_engine", ENGINE, "--aggregate_method", "summarization", "--comet_mode", "disabled",
            "--do_not_run_larger_model", "--output_dir", str(workdir), "--run_name", name,
            "--cache_dir", str(workdir / f"cache-{name}"), *flags]
    with contextlib.redirect_stdout(io.StringIO()):
        if main_cli(argv) != 0:
            raise SystemExit(f"the {name} run failed")
    return json.loads((workdir / name / "results.json").read_text())


def leakage_table(workdir: Path, common: list[str]) -> None:
    print("Leakage per round (max over clients; written = as the optimizer wrote it, sent = after the guard)")
    print(f"{'guard':<7} {'round':>5} {'run written':>12} {'run sent':>9} {'share written':>14} {'share sent':>11} "
          f"{'redacted':>9} {'rejected':>9}")
    for guard in ("off", "redact", "reject"):
        results = run(workdir, f"leak-{guard}", [*common, "--homo_split_num", "3", "--leak_guard", guard])
        for r in results["rounds"]:
            leak = r["leakage"]
            print(f"{guard:<7} {r['round']:>5} {leak['max_written_longest_run']:>12} {leak['max_longest_run']:>9} "
                  f"{leak['max_written_shingle_share']:>14.3f} {leak['max_shingle_share']:>11.3f} "
                  f"{leak['redacted_updates']:>9} {leak['rejected_updates']:>9}")


def poisoning_table(workdir: Path, common: list[str]) -> None:
    print("\n1 of 4 clients injecting 'always answer -9999'; validation accuracy of the global prompt")
    poisoned = [*common, "--homo_split_num", "4", "--malicious_clients", "1", "--attack", "inject"]
    for method in ("none", "screen"):
        results = run(workdir, f"poison-{method}", [*poisoned, "--robust_aggregation", method])
        per_round = ", ".join(f"r{r['round']} {r['val']['mean']:.3f}" for r in results["rounds"])
        print(f"{method:<7} zero-shot {results['zero_shot']['val']['mean']:.3f}; {per_round}; "
              f"final test (last) {results['final_test']['last']['mean']:.3f}; "
              f"LLM calls in all {results['llm']['calls']}")
        screening = results.get("screening")
        if screening:
            left_out = "; ".join(f"round {k}: {', '.join(v) or '-'}" for k, v in screening["left_out"].items())
            share = screening["llm_calls"] / results["llm"]["calls"]
            print(f"        screening cost {screening['requests']} answers, {screening['llm_calls']} LLM calls "
                  f"({share:.1%} of the run's); left out {left_out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quote_rate", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    common = ["--max_epochs", str(args.rounds), "--max_steps", "3", "--batch_size", "3", "--split_sizes", "24,20,10",
              "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="fedtextgrad-defences-") as tmp:
        with FakeServer(quote_rate=args.quote_rate) as quoting:
            os.environ["VLLM_BASE_URL"] = quoting.base_url
            leakage_table(Path(tmp), common)
        with FakeServer() as server:
            os.environ["VLLM_BASE_URL"] = server.base_url
            poisoning_table(Path(tmp), common)


if __name__ == "__main__":
    main()
