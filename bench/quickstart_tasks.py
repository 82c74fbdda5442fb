"""Zero-shot accuracy of the starting prompt on the offline tasks, through the embedded llama.cpp server.

    python bench/quickstart_tasks.py                                  # every synthetic task, 80 questions
    python bench/quickstart_tasks.py --tasks synthetic_odd_one_out --questions 40 --max_tokens 32 64
    python bench/quickstart_tasks.py --questions 60 --max_tokens 32 --prompts start one_line none

Which built-in task makes a quickstart whose accuracies can move: the embedded model (SmolLM2-135M-Instruct
unless LOCAL_MODEL_PATH says otherwise) should solve some questions but not all, and other instructions
should score differently. Each task's questions are the first --questions of its fixed pool (the ones the
quickstart's splits are cut from), answered through utils.tasks.evaluation, as a run's validation is, with no
response cache, by the task's starting prompt and any other --prompts (each served with the task's answer
format line, as in a run). Prints one row per task, prompt and answer limit: accuracy, the mean reply
length in tokens (near the limit: the model rambles and its replies are cut), and the seconds the
evaluation took, with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textgrad.engine import get_engine  # noqa: E402
from textgrad.serving.llama_process import pool_size  # noqa: E402
from textgrad.serving.runtime import Runtime, use_runtime  # noqa: E402
from textgrad.serving.settings import Settings  # noqa: E402
from textgrad.serving.stats import metered  # noqa: E402
from utils.tasks.data import load_examples  # noqa: E402
from utils.tasks.evaluation import evaluate_prompt  # noqa: E402
from utils.tasks.registry import SYNTHETIC_TASKS, resolve_task  # noqa: E402

# Trained texts to compare with the starting prompt: does any instruction move a task's accuracy?
OTHER_PROMPTS = {
    "one_line": "Answer in one line with only the answer.",
    "none": "",  # no instructions: the answer-format line alone
}


def measure(task_name: str, prompt: str, questions: int, max_tokens: int) -> tuple[float, float, float]:
    """(accuracy, mean completion tokens per answer, seconds) of `prompt` ("start": the task's own)."""
    task = resolve_task(task_name)
    pool, _ = load_examples(task, None)
    engine = get_engine("local", use_cache=False)
    text = task.starting_prompt() if prompt == "start" else OTHER_PROMPTS[prompt]
    started = time.monotonic()
    with metered() as meter:
        result = evaluate_prompt(text, pool[:questions], task, engine, max_tokens=max_tokens)
    seconds = time.monotonic() - started
    counts = meter.as_dict()
    return result.accuracy, counts["completion_tokens"] / max(counts["calls"], 1), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(SYNTHETIC_TASKS), help="default: every synthetic task")
    parser.add_argument("--questions", type=int, default=80, help="questions per task (default 80)")
    parser.add_argument("--max_tokens", type=int, nargs="+", default=[64],
                        help="answer length limits to measure (default 64)")
    parser.add_argument("--prompts", nargs="+", choices=["start", *OTHER_PROMPTS], default=["start"],
                        help="trained texts to measure: start (the task's starting prompt, the default), "
                             + ", ".join(f"{name} ({text!r})" for name, text in OTHER_PROMPTS.items()))
    parser.add_argument("--local_servers", type=int, default=None,
                        help="embedded servers (default: LOCAL_SERVERS, else one per core, at most 4)")
    opts = parser.parse_args()
    runtime = Runtime(Settings(local_servers=opts.local_servers, use_cache=False))
    try:
        with use_runtime(runtime):
            _measure_all(opts, runtime)
    finally:
        runtime.close()  # stops the embedded servers this script started


def _measure_all(opts: argparse.Namespace, runtime: Runtime) -> None:
    started = time.monotonic()
    runtime.ensure_embedded()
    print(f"{pool_size(opts.local_servers)} embedded server(s) ready in {time.monotonic() - started:.1f} s",
          flush=True)
    print(f"{'task':<34} {'prompt':<8} {'n':>4} {'max_tokens':>10} {'accuracy':>8} {'answer tokens':>13} "
          f"{'seconds':>8} {'load':>5}")
    for task_name in opts.tasks:
        for prompt in opts.prompts:
            for max_tokens in opts.max_tokens:
                accuracy, tokens, seconds = measure(task_name, prompt, opts.questions, max_tokens)
                print(f"{task_name:<34} {prompt:<8} {opts.questions:>4} {max_tokens:>10} {accuracy:>8.3f} "
                      f"{tokens:>13.1f} {seconds:>8.1f} {os.getloadavg()[0]:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
