"""Runs a researcher can watch and stop: a bar per phase, warnings above the bars and once per run, the
estimated time of the whole run, timestamps and per-phase seconds, Ctrl-C that stops at once without
blaming the server, --resume that says where it continues, one comet experiment across a resume.

The whole-run scenarios are real `python main.py` processes against bench/fake_server (one in a
pseudo-terminal, so its bars are drawn as on a screen), run side by side by a module fixture.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import warnings
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from run_helpers import (
    REPO,
    ServerProcess,
    checkpoint_round,
    main_command,
    main_env,
    read_events,
    run_args,
    run_main,
    wait_for,
)

from textgrad.engine import get_engine
from textgrad.parallel import run_concurrently
from textgrad.serving import interrupt
from textgrad.serving.runtime import Runtime
from utils.reporting import progress

EXPERIMENT = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", "--split_sizes", "9,6,6",
              "--homo_split_num", "3", "--max_epochs", "3", "--max_steps", "1", "--seed", "5"]
PHASES = {"server_startup", "zero_shot", "local_steps", "aggregation", "validation", "final_test"}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---------------------------------------------------------------------------------- whole runs


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal got on stderr) of main.py with stderr on a 160-column pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(main_command(argv), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=slave,
                               stdin=subprocess.DEVNULL)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # the child closed its end
            break
        if ready and not chunk:
            break
        screen += chunk
        if not ready and process.poll() is not None:
            break
    os.close(master)
    stdout = process.communicate(timeout=30)[0].decode()
    return process.returncode, stdout, screen.decode("utf-8", "replace")


def bar_lines(screen: str, desc: str) -> list[str]:
    """Every drawing of the bars whose description starts with desc."""
    pieces = [ANSI.sub("", piece).strip() for piece in re.split(r"[\r\n]", screen)]
    return [piece for piece in pieces if piece.startswith(desc)]


def watched_run(root: Path) -> dict[str, Any]:
    # No log-probabilities: every prompt's UID measurement fails with the same warning.
    with ServerProcess("--latency", "0.05", "--no_logprobs") as server:
        code, stdout, screen = run_in_terminal(run_args(root / "out", "watched", root / "cache", *EXPERIMENT),
                                               main_env(server.base_url))
    run_dir = root / "out" / "watched"
    return {"code": code, "stdout": stdout, "screen": screen, "run_dir": run_dir,
            "results": json.loads((run_dir / "results.json").read_text()) if code == 0 else None}


def interrupted_then_resumed(root: Path) -> dict[str, Any]:
    argv = [a for a in run_args(root / "out", "stopped", root / "cache", *EXPERIMENT, "--comet_log_path",
                                str(root / "comet")) if a != "disabled"]
    argv.remove("--comet_mode")  # comet_ml offline, the default
    run_dir = root / "out" / "stopped"
    with ServerProcess("--latency", "0.1") as server:
        process = subprocess.Popen(main_command(argv), env=main_env(server.base_url), cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: checkpoint_round(run_dir) >= 1, 240, "round 1's checkpoint")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        stopped_at = checkpoint_round(run_dir)
        resumed = run_main(["--resume", "--run_name", "stopped", "--output_dir", str(root / "out")],
                           main_env(server.base_url))
    return {"code": process.returncode, "stderr": stderr, "stopped_at": stopped_at, "resumed": resumed,
            "run_dir": run_dir, "comet": root / "comet"}


def interrupted_mid_request(root: Path) -> dict[str, Any]:
    """Ctrl-C while every request takes 30 s: the run must not wait for the ones in flight."""
    with ServerProcess("--latency", "30") as server:
        process = subprocess.Popen(main_command(run_args(root / "out", "slow", root / "cache", *EXPERIMENT)),
                                   env=main_env(server.base_url), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_for(lambda: server.stats()["in_flight"] > 0, 120, "requests in flight")
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        seconds = time.monotonic() - started
        in_flight_after_exit = server.stats()["in_flight"]
    return {"code": process.returncode, "stderr": stderr, "in_flight_after_exit": in_flight_after_exit,
            "seconds": seconds}


SCENARIOS = {"watched": watched_run, "stopped": interrupted_then_resumed, "slow": interrupted_mid_request}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    root = tmp_path_factory.mktemp("run-console")
    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        return {name: pool.submit(run, root / name) for name, run in SCENARIOS.items()}


def test_every_phase_has_a_bar_of_calls_cache_hits_retries_and_eta(scenarios: dict[str, Future]) -> None:
    run = scenarios["watched"].result()
    assert run["code"] == 0, run["screen"][-3000:]
    screen = run["screen"]
    assert any(re.fullmatch(r"checking the LLM endpoints: \d\d:\d\d.*", line)
               for line in bar_lines(screen, "checking the LLM endpoints"))  # start-up: its time so far
    # A round whose clients all return the same prompt merges nothing, and a prompt validated before is
    # not validated again: those rounds draw no merge or validation bar.
    for desc in ("zero-shot", "round 1: local steps", ": merge: ", ": validation: ", "final test"):
        drawn = [line for line in bar_lines(screen, "round ") if desc in line] if desc.startswith(":") else \
            bar_lines(screen, desc)
        assert drawn, f"no bar for {desc}"
        assert any("cache hits" in line and "retries" in line for line in drawn), drawn[-1]
    # Calls done / expected with an ETA: "12/12 [00:01<00:00" for the 6 validation + 6 test answers.
    assert any(re.search(r"\b12/12 \[\d\d:\d\d<\d\d:\d\d", line) for line in bar_lines(screen, "zero-shot"))
    assert any(re.search(r"local steps \d/3: .*\d+/\d+ \[", line) for line in bar_lines(screen, "round 2: local"))
    # The rounds bar: rounds done with the last validation accuracy and the best so far.
    results = run["results"]
    last = results["rounds"][-1]["val"]["mean"]
    final = bar_lines(screen, "rounds")
    assert any("3/3" in line and f"val {last:.3f}, best {results['best']['val']:.3f}" in line for line in final)


def test_a_repeated_warning_prints_once_above_the_bars_with_its_count_at_the_end(
        scenarios: dict[str, Future]) -> None:
    run = scenarios["watched"].result()
    screen = run["screen"]
    # Once, plus the count line at the end of the run (3 clients + 1 aggregate per round, fewer when equal).
    shown = re.findall(r"warning: UID measures not available from vllm-fake-model[^\r\n]*", screen)
    assert len(shown) == 2, shown
    assert re.search(r"\(and \d+ more like it in this run\)$", shown[1]), shown[1]
    # Printed at the start of a line (the bars cleared first), never after a bar's text.
    for match in re.finditer(r"warning: UID", screen):
        assert re.search(r"(\r|\n|\x1b\[A)$", screen[:match.start()]), repr(screen[match.start() - 80:match.start()])


def test_the_estimate_of_the_whole_run_follows_the_zero_shot_phase_and_round_1(scenarios: dict[str, Future]) -> None:
    run = scenarios["watched"].result()
    screen, results = run["screen"], run["results"]
    line = re.search(r"estimate after the zero-shot evaluation: the whole run takes about (\d+) s .*?, "
                     r"(\d+) LLM calls by its plan, each kind at its pace so far \((.*?)\)", screen)
    assert line, screen[-2000:]
    assert screen.index("estimate after") > screen.rindex("zero-shot:")  # after its bar closed, not before
    estimated_calls = int(line.group(2))
    made = results["llm"]["calls"] + results["llm"]["cache_hits"]
    assert made / 2 <= estimated_calls <= made * 2  # the plan's a-priori count: see tests/test_plan.py
    after_round_1 = re.search(r"estimate after round 1: .*? each kind at its pace so far \((.*?)\)", screen)
    assert after_round_1, screen[-2000:]
    # By then every kind of call this run makes has been timed (the UID requests too: the server takes them,
    # though it answers without log-probabilities).
    assert re.fullmatch(r"answer [\d.]+ s, feedback [\d.]+ s, logprob [\d.]+ s, merge [\d.]+ s, optimizer [\d.]+ s",
                        after_round_1.group(1))
    events = [e for e in read_events(run["run_dir"]) if e["type"] == "estimate"]
    assert [e["after_round"] for e in events] == [0, 1, 2]  # none after the last round: nothing is left
    assert events[0]["llm_calls"] == estimated_calls and all(e["seconds"] > 0 for e in events)
    # The rounds bar shows the time still to go after each round but the last.
    assert any(re.search(r"2/3 .*best [\d.]+ \(round \d\), about \d+ s left", line)
               for line in bar_lines(screen, "rounds"))


def test_events_have_timestamps_and_results_per_phase_seconds(scenarios: dict[str, Future]) -> None:
    run = scenarios["watched"].result()
    events = read_events(run["run_dir"])
    stamps = [datetime.fromisoformat(e["time"]) for e in events]
    assert all(s.tzinfo is not None for s in stamps)
    # In the order written (threads stamp just before they take the file's lock), over the run's time.
    assert all((later - earlier).total_seconds() > -1 for earlier, later in zip(stamps, stamps[1:], strict=False))
    assert 0 < (stamps[-1] - stamps[0]).total_seconds() <= run["results"]["wall_seconds"] + 1
    seconds = run["results"]["phase_seconds"]
    assert set(seconds) == PHASES
    assert all(value > 0 for key, value in seconds.items() if key != "aggregation")
    assert seconds["local_steps"] < run["results"]["wall_seconds"]


def test_ctrl_c_stops_without_retries_or_blame_and_ends_with_the_resume_hint(scenarios: dict[str, Future]) -> None:
    run = scenarios["stopped"].result()
    assert run["code"] == 130
    lines = [line for line in run["stderr"].replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1] == (f"interrupted: continue with python main.py --resume --run_name stopped --output_dir "
                         f"{run['run_dir'].parent}")
    after = run["stderr"][run["stderr"].find("interrupted") - 2000:]
    for blame in ("retrying", "attempt", "cannot reach", "failed", "Traceback", "COMET"):
        assert blame not in after


def test_resume_says_which_round_it_continues_from(scenarios: dict[str, Future]) -> None:
    run = scenarios["stopped"].result()
    resumed = run["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = run["stopped_at"]
    assert 1 <= done < 3
    assert (f"resuming stopped from its checkpoint after round {done}: continuing with round {done + 1} of 3"
            in resumed.stderr)


def _comet_archive(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with zipfile.ZipFile(path) as archive:
        experiment = json.loads(archive.read("experiment.json"))
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
    return experiment, messages


def test_comet_resume_reopens_the_same_experiment_on_one_round_axis(scenarios: dict[str, Future]) -> None:
    run = scenarios["stopped"].result()
    assert run["resumed"].returncode == 0
    archives = sorted(run["comet"].glob("*.zip"), key=lambda p: _comet_archive(p)[0]["start_time"])
    assert len(archives) == 2
    (first, first_messages), (second, second_messages) = map(_comet_archive, archives)
    assert first["offline_id"] == second["offline_id"]  # one experiment ...
    assert first["resume_strategy"] == "create" and second["resume_strategy"] == "get"  # ... continued
    checkpoint = json.loads((run["run_dir"] / "checkpoint.json").read_text())
    assert checkpoint["comet_experiment_key"] == first["offline_id"]

    def params(messages: list[dict[str, Any]]) -> dict[str, str]:
        found = [m["payload"].get("param") or {} for m in messages if m["type"] == "parameter_msg"]
        return {p.get("paramName"): p.get("source") for p in found if p}

    assert {"module", "max_steps", "seed"} <= set(params(first_messages))
    sources = {*params(first_messages).values(), *params(second_messages).values()}
    assert "cli" not in sources  # comet does not parse main.py's argv into parameters of its own
    steps = {m["payload"]["metric"]["metricName"]: set() for m in first_messages + second_messages
             if m["type"] == "metric_msg"}
    for m in first_messages + second_messages:
        if m["type"] == "metric_msg":
            steps[m["payload"]["metric"]["metricName"]].add(m["payload"]["metric"]["step"])
    # Rounds on one axis: batch accuracies included, no step beyond the last round.
    assert steps["train/client0/batch_accuracy"] == {1, 2, 3}
    assert all(s <= {0, 1, 2, 3} for s in steps.values())
    # comet's own console lines ("COMET INFO: Still saving offline stats ...") stay quiet.
    assert "COMET" not in run["stderr"] + run["resumed"].stderr + run["resumed"].stdout


def test_ctrl_c_does_not_wait_for_requests_in_flight(scenarios: dict[str, Future]) -> None:
    run = scenarios["slow"].result()
    assert run["code"] == 130, run["stderr"][-3000:]
    # The server still holds the requests (30 s each): the run ended without waiting for any of them.
    assert run["in_flight_after_exit"] > 0, run
    last = run["stderr"].strip().splitlines()[-1]
    assert last.startswith("interrupted: continue with python main.py --resume"), run["stderr"][-3000:]
    stuck = re.search(r"what every thread was doing: (\S+)\)", run["stderr"])
    if stuck:  # the watchdog ended it: the run stopped, but a clean stop hung somewhere; show where
        trace = Path(stuck.group(1))
        warnings.warn("Ctrl-C needed the watchdog:\n" + (trace.read_text() if trace.exists() else "(no trace)"),
                      stacklevel=1)
        trace.unlink(missing_ok=True)  # shown above: the test session leaves nothing in /tmp
    else:
        assert run["seconds"] < interrupt.STOP_GRACE_S, run


# ---------------------------------------------------------------------------------- the parts


def test_the_retry_loop_stops_at_once_after_an_interrupt(make_fake_server: Any, monkeypatch: pytest.MonkeyPatch,
                                                          runtime: Runtime) -> None:
    server = make_fake_server(fail_with=[500] * 6)
    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    engine = get_engine("vllm-fake-model")
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            engine.generate("hello", max_tokens=4)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    wait_for(lambda: server.chat_count >= 1, 30, "the first attempt")
    runtime.stop.request()  # during the backoff before attempt 2
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert isinstance(outcome[0], interrupt.Interrupted)
    assert server.chat_count <= 2  # nothing sent after the stop (the first retry may have been on its way)
    assert engine.stats.as_dict()["failures"] == 0  # not counted as the server's failure


STUCK_AFTER_CTRL_C = """
import sys, time
from textgrad.serving.interrupt import StopSignals
from textgrad.serving.runtime import current_runtime
StopSignals(current_runtime().stop, lambda: "interrupted: resume me", grace_s=float(sys.argv[1])).install()
said = "ready"
while True:  # a bug that swallows the KeyboardInterrupt and waits on
    try:
        print(said, flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        said = "swallowed"
"""


def _stuck_process(grace: float) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", STUCK_AFTER_CTRL_C, str(grace)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_a_run_stuck_after_ctrl_c_ends_after_the_grace_with_every_threads_stack() -> None:
    process = _stuck_process(grace=1.0)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert time.monotonic() - started >= 1.0  # not before the grace
    assert stdout == "swallowed\n"
    lines = stderr.strip().splitlines()
    assert lines[-1] == "interrupted: resume me"
    stuck = re.fullmatch(r"warning: the run had not ended 1 s after Ctrl-C; ending the run now "
                         r"\(what every thread was doing: (\S+)\)", lines[-2])
    assert stuck, lines
    trace = Path(stuck.group(1))
    assert "time.sleep" in trace.read_text() or "<string>" in trace.read_text()
    trace.unlink()


def test_a_second_ctrl_c_ends_the_run_at_once() -> None:
    process = _stuck_process(grace=600.0)
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None and process.stdout.readline() == "swallowed\n"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130 and time.monotonic() - started < 10  # not the 600 s grace
    assert stderr.strip().splitlines()[-2:] == ["warning: a second Ctrl-C; ending the run now",
                                                "interrupted: resume me"]


def test_run_concurrently_returns_at_once_when_a_call_is_interrupted() -> None:
    release = threading.Event()
    finished: list[str] = []

    def slow() -> None:
        release.wait(30)
        finished.append("slow")

    def stopped() -> None:
        raise interrupt.Interrupted("stopped")

    with pytest.raises(interrupt.Interrupted):
        run_concurrently([slow, stopped])
    assert finished == []  # it did not wait for the slow call
    release.set()


def test_warnings_repeat_once_per_run_with_their_count(capsys: pytest.CaptureFixture[str], runtime: Runtime) -> None:
    logger = logging.getLogger("utils.reporting.uid")
    with progress.run_console():
        for index in range(5):
            logger.warning("UID measures not available from %s: %s", "local", f"error\nnumber {index}")
        logging.getLogger("textgrad.engine").warning("another warning")
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: UID measures not available from local: error number 0", "warning: another warning",
                   "warning: UID measures not available from local: error number 0 (and 4 more like it in this run)"]
    runtime.stop.request()  # after Ctrl-C no warning blames anyone
    with progress.run_console():
        logger.warning("cannot reach %s", "the server")
    assert capsys.readouterr().err == ""


def test_fake_server_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "bench.fake_server", "--port", str(port)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert "--port" in done.stderr and "Traceback" not in done.stderr


def test_hub_failures_are_reported_without_the_hubs_own_log_lines(monkeypatch: pytest.MonkeyPatch,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    datasets = pytest.importorskip("datasets")
    from utils.tasks.data import DataError, load_examples
    from utils.tasks.registry import resolve_task

    def failing_load(*args: Any, **kwargs: Any) -> None:
        for name in ("huggingface_hub", "datasets", "urllib3"):
            logging.getLogger(name).warning("Retrying in 1s [Retry 1/5] (%s)", name)
        raise ConnectionError("Couldn't reach 'lukaemon/bbh' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", failing_load)
    with progress.run_console(), pytest.raises(DataError, match="Hugging Face hub failed"):
        load_examples(resolve_task("BBH_object_counting"), None)
    captured = capfd.readouterr()
    assert "Retrying" not in captured.err + captured.out
    assert logging.getLogger("datasets").level != logging.CRITICAL  # put back afterwards
