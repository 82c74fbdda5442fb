"""Everything a run records: config.yaml, events.jsonl, prompts/, checkpoint.json, results.json, comet_ml.

comet_ml gets the same parameters, metrics and prompt texts as the local files.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from utils.files import (
    TEMP_SUFFIX,
    json_bytes,
    naming,
    write_after_sync,
    write_text_atomic,
)

CHECKPOINT = "checkpoint.json"


class CometSink:
    """A thin wrapper so the rest of the code never checks which comet mode is on.

    A resumed run reopens its experiment (its key is kept in the checkpoint): one experiment, one history.
    comet_ml takes about a second to import: an offline experiment is set up in a thread of its own while
    the run sends its first requests (the first thing logged waits for it); an online one before the run
    starts, so that a rejected key stops it before any LLM call.
    """

    def __init__(self, mode: str, project: str, log_path: Path, run_name: str,
                 experiment_key: str | None = None) -> None:
        self._experiment: Any = None
        self._setting_up: Future[Any] | None = None
        if mode == "disabled":
            return
        # comet_ml reports its own crashes to a remote service by default; a research run should not. Its
        # console chatter ("Still saving offline stats ...", upload hints) would break the progress bars:
        # errors only. Both are read when comet_ml is first imported.
        os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        os.environ.setdefault("COMET_LOGGING_CONSOLE", "ERROR")
        if mode == "offline":
            log_path.mkdir(parents=True, exist_ok=True)
            self._setting_up = Future()
            threading.Thread(target=self._set_up, args=(mode, project, log_path, run_name, experiment_key),
                             name="fedtextgrad-comet", daemon=True).start()
        else:
            self._experiment = _open_experiment(mode, project, log_path, run_name, experiment_key)

    def _set_up(self, *args: Any) -> None:
        assert self._setting_up is not None
        try:
            self._setting_up.set_result(_open_experiment(*args))
        except BaseException as exc:  # raised where the experiment is first used
            self._setting_up.set_exception(exc)

    @property
    def experiment(self) -> Any:
        """The comet_ml experiment (None with comet disabled, or ended), once it is set up."""
        if self._setting_up is not None:
            self._experiment, self._setting_up = self._setting_up.result(), None
        return self._experiment

    @property
    def key(self) -> str | None:
        """The experiment's key, for the checkpoint (None with comet disabled)."""
        return self.experiment.get_key() if self.experiment is not None else None

    def parameters(self, params: dict[str, Any]) -> None:
        if self.experiment is not None:
            self.experiment.log_parameters(params)

    def metric(self, name: str, value: float, step: int) -> None:
        if self.experiment is not None:
            self.experiment.log_metric(name, value, step=step)

    def text(self, text: str, step: int, metadata: dict[str, Any]) -> None:
        if self.experiment is not None:
            self.experiment.log_text(text, step=step, metadata=metadata)

    def end(self) -> None:
        if self.experiment is not None:
            self._experiment.end()
            self._experiment = None


def _open_experiment(mode: str, project: str, log_path: Path, run_name: str, experiment_key: str | None) -> Any:
    import comet_ml  # slow to import: only when used

    options: dict[str, Any] = dict(
        project_name=project, display_summary_level=0, auto_output_logging=False, auto_param_logging=False,
        auto_metric_logging=False, parse_args=False, log_code=False, log_git_metadata=False, log_git_patch=False)
    if mode == "offline":
        options.update(offline_directory=str(log_path), log_env_details=False, log_env_gpu=False,
                       log_env_host=False)
        if experiment_key:
            experiment = comet_ml.ExistingOfflineExperiment(experiment_key=experiment_key, **options)
        else:
            experiment = comet_ml.OfflineExperiment(**options)
    elif experiment_key:
        experiment = comet_ml.ExistingExperiment(api_key=os.environ["COMET_API_KEY"], experiment_key=experiment_key,
                                                 **options)
    else:
        experiment = comet_ml.Experiment(api_key=os.environ["COMET_API_KEY"], **options)
    if not experiment_key:
        experiment.set_name(run_name)
    return experiment


class RunLog:
    def __init__(self, run_dir: Path, comet: CometSink) -> None:
        self.run_dir = run_dir
        self.comet = comet
        self.events_path = run_dir / "events.jsonl"
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        import yaml  # here: config.yaml is written while the run's first requests are answered

        write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=True))
        self.comet.parameters(config)

    def event(self, kind: str, **fields: Any) -> None:
        # One line per write under a lock: lines from concurrent clients never interleave. The time is
        # local, with its UTC offset, to the millisecond.
        stamp = datetime.now().astimezone().isoformat(timespec="milliseconds")
        line = json.dumps({"type": kind, "time": stamp, **fields}, ensure_ascii=False) + "\n"
        with self._lock, naming(self.events_path), open(self.events_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def events_size(self) -> int:
        return self.events_path.stat().st_size if self.events_path.exists() else 0

    def truncate_events(self, size: int) -> None:
        """On resume, drop events of the round that was interrupted: it is recomputed."""
        if self.events_path.exists() and self.events_path.stat().st_size > size:
            with open(self.events_path, "r+b") as fh:
                fh.truncate(size)

    def save_prompt(self, round_index: int, name: str, text: str) -> None:
        self.save_prompts(round_index, {name: text})

    def save_prompts(self, round_index: int, texts: dict[str, str]) -> None:
        """Several prompts of a round (name -> text), made durable by the next checkpoint, which points at
        them (see save_checkpoint): without a sync of their own, one after another is fastest. comet gets them in order."""
        folder = self.run_dir / "prompts" / f"round_{round_index:03d}"
        for name, text in texts.items():
            write_text_atomic(folder / f"{name}.txt", text + "\n", durable=False)
        for name, text in texts.items():
            self.comet.text(text, step=round_index, metadata={"round": round_index, "prompt": name})

    def metric(self, name: str, value: float, step: int) -> None:
        self.comet.metric(name, value, step)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """The one durable write of a round: the prompts and events written since the last checkpoint reach
        the disk with this one's content in one sync, before it replaces the last one."""
        write_after_sync(self.run_dir / CHECKPOINT, json_bytes({**state, "events_size": self.events_size(),
                                                                "comet_experiment_key": self.comet.key}))

    def rewind(self, events_size: int) -> None:
        """On resume, back to the last checkpoint (utils.federated.checkpoint read and checked it): events.jsonl
        cut back to the size it had then (which also drops a line torn by a kill; 0 if the run stopped before
        its first checkpoint), and the temporary files of writes a kill interrupted removed."""
        self.remove_stray_temp_files()
        self.truncate_events(events_size)

    def remove_stray_temp_files(self) -> None:
        """A run killed during an atomic write leaves its temporary file (never a half-written target)."""
        for tmp in self.run_dir.rglob(f".*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def write_results(self, results: dict[str, Any]) -> None:
        write_after_sync(self.run_dir / "results.json", json_bytes(results))


def open_run_log(run_dir: Path, comet_mode: str, comet_project: str, comet_log_path: Path,
                 resume: bool = False) -> RunLog:
    run_dir.mkdir(parents=True, exist_ok=True)
    key = saved_comet_key(run_dir) if resume else None
    return RunLog(run_dir, CometSink(comet_mode, comet_project, comet_log_path, run_dir.name, key))


def saved_comet_key(run_dir: Path) -> str | None:
    """The comet experiment key a run's checkpoint holds (None: no checkpoint yet, or comet was off)."""
    try:
        key = json.loads((run_dir / CHECKPOINT).read_text(encoding="utf-8")).get("comet_experiment_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) and key else None
