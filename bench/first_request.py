"""What a plain run imports before its first request to the LLM server, and how long those imports take.

    python bench/first_request.py [--repeat 5]

Runs `python -X importtime main.py` (a one-round train_homo_fed run) against the bench server, stops the
import log at the run's first connection to the server (an audit hook on socket.connect), and prints
the modules imported by then, their self import time (the sum of `-X importtime`'s self column; the
smallest of --repeat runs, the machine being shared), the CPU seconds the process had spent by then
(a figure other jobs on the machine barely change, unlike the wall time) and which of the heavy ones
(matplotlib, numpy, the estimator, comet_ml, llama_cpp) were among them: a plain run needs none of them
to send its first request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

MARK = "@@first-request@@ "
HEAVY = ("matplotlib", "numpy", "utils.estimate", "comet_ml", "llama_cpp", "datasets")
RUN = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "6,4,4",
       "--max_epochs", "1", "--max_steps", "1", "--batch_size", "1", "--test_engine", "vllm-fake-model",
       "--evaluation_engine", "vllm-fake-model", "--no_cache", "--comet_mode", "disabled"]
# Runs main.py as `python main.py` would, with a hook that writes the imported modules to stderr, among
# -X importtime's lines, when the process first connects to the server's port.
PROBE = """
import json, runpy, sys, time
PORT, MARK = int(sys.argv.pop(1)), sys.argv.pop(1)
def hook(event, args):
    if event == "socket.connect" and not hook.seen and isinstance(args[1], tuple) and args[1][1:2] == (PORT,):
        hook.seen = True
        seen = {"cpu": time.process_time(), "modules": sorted(sys.modules)}
        sys.stderr.write(MARK + json.dumps(seen) + "\\n")
        sys.stderr.flush()
hook.seen = False
sys.addaudithook(hook)
sys.argv[0] = "main.py"
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass
class FirstRequest:
    modules: list[str]    # imported when the run first connected to the server
    import_ms: float      # their self import time, summed
    exit_code: int
    cpu_s: float = 0.0    # CPU seconds of the process by then

    def heavy(self) -> dict[str, list[str]]:
        """The heavy packages among the modules, each with its modules imported by then."""
        return {name: [m for m in self.modules if m == name or m.startswith(name + ".")] for name in HEAVY}


def _self_ms(log: str) -> float:
    total = 0
    for line in log.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us = line.split(":", 1)[1].split("|", 1)[0].strip()
            total += int(self_us) if self_us.isdigit() else 0
    return total / 1000


def first_request(base_url: str, port: int, out_dir: Path) -> FirstRequest:
    """One plain run against the server at base_url (listening on port), observed up to its first request."""
    env = {**os.environ, "VLLM_BASE_URL": base_url, "HF_HUB_OFFLINE": "1", "FEDTEXTGRAD_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE, str(port), MARK, *RUN,
                           "--output_dir", str(out_dir), "--run_name", "first-request"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    before, _, after = done.stderr.partition(MARK)
    seen = json.loads(after.splitlines()[0]) if after else {"modules": [], "cpu": 0.0}
    return FirstRequest(seen["modules"], _self_ms(before), done.returncode, seen["cpu"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from bench.fake_server import FakeServer

    with FakeServer() as server, tempfile.TemporaryDirectory(prefix="fedtextgrad-first-request-") as tmp:
        runs = [first_request(server.base_url, server.port, Path(tmp) / str(i)) for i in range(args.repeat)]
    if any(run.exit_code != 0 or not run.modules for run in runs):
        raise SystemExit("a run failed or never reached the server")
    print(f"modules imported before the first request: {len(runs[0].modules)}")
    print(f"their self import time: {min(run.import_ms for run in runs):.0f} ms (smallest of {args.repeat} runs)")
    print(f"CPU seconds of the process by then: {min(run.cpu_s for run in runs):.2f} s (smallest of {args.repeat})")
    for name, modules in runs[0].heavy().items():
        print(f"  {name:<16} {len(modules)} modules")


if __name__ == "__main__":
    main()
