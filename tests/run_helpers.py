"""Helpers for tests that run `python main.py` as a real process against the bench server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAKE_ENGINES = ["--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model"]


def main_env(base_url: str, **extra: str) -> dict[str, str]:
    """The environment of a child run: the bench server as the vLLM endpoint, no hub, no stray endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VLLM_", "COMET_"))}
    env.update(VLLM_BASE_URL=base_url, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def main_command(argv: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "main.py"), *argv]


def run_main(argv: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(main_command(argv), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def run_args(output_dir: Path, run_name: str, cache_dir: Path, *extra: str) -> list[str]:
    return [*FAKE_ENGINES, "--output_dir", str(output_dir), "--run_name", run_name, "--cache_dir", str(cache_dir),
            "--comet_mode", "disabled", *extra]


class ServerProcess:
    """bench/fake_server in its own process, so a test can pull its plug (SIGKILL) and restart it."""

    def __init__(self, *options: str) -> None:
        self.options = list(options)
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self, port: int = 0) -> ServerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fake_server", "--port", str(port), *self.options],
            # stderr: the server reports each connection a killed run broke; that is expected noise here.
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        url = self.process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://"), "the bench server did not start"
        self.base_url = url
        return self

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def _call(self, route: str, post: bool = False) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url.removesuffix("/v1") + route, data=b"{}" if post else None,
                                         method="POST" if post else "GET")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")

    def reset_stats(self) -> None:
        self._call("/stats/reset", post=True)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checkpoint_round(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())["round"]
    except (OSError, ValueError, KeyError):
        return -1


def final_numbers(results: dict[str, Any]) -> dict[str, Any]:
    """What a run found, without what it cost: equal for runs that saw the same replies."""
    return {
        "zero_shot": results["zero_shot"], "val": [r["val"] for r in results["rounds"]],
        "client_train_accuracy": [r["client_train_accuracy"] for r in results["rounds"]],
        "best": results["best"], "final_prompt": results["final_prompt"], "final_test": results["final_test"],
        "steps": results["steps"], "format_failures": results["format_failures"],
    }


def prompt_files(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): p.read_text() for p in sorted((run_dir / "prompts").rglob("*.txt"))}


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def assert_run_files_intact(run_dir: Path) -> None:
    """Every file parses, no temporary file is left, events.jsonl is whole lines of JSON."""
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
    for name in ("checkpoint.json", "results.json"):
        json.loads((run_dir / name).read_text())
    text = (run_dir / "events.jsonl").read_text()
    assert text.endswith("\n")
    read_events(run_dir)
    for prompt in (run_dir / "prompts").rglob("*.txt"):
        assert prompt.read_text().endswith("\n"), prompt
    for plot in (run_dir / "plots").glob("*.png"):
        assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), plot
