"""Loading task examples and cutting them into train / validation / test.

Sources are tried in the order of the spec: files under ``--data_dir``, then the
Hugging Face hub. Every failure a user can fix surfaces as one ``DataError`` line
that names the file or the two sources and what to do next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.tasks.registry import Example, TaskSpec, with_kind_from_targets
from utils.tasks.synthetic import generate_examples

PAPER_SPLIT = (50, 100, 100)

# Fixed constants, never the run's --seed: a split is part of the benchmark, not of the method.
_SYNTHETIC_POOL_SEED = 0
GSM8K_SHUFFLE_SEED = 0
# GSM8K as the reference code cuts it (ubc-tea/FedTextGrad, its GSM8K_DSPy task): each official split shuffled
# by its own random.Random(0), then train = train[0:50], validation = train[200:300], test = test[300:400].
# --split_sizes T,V,TE takes prefixes of these slices (or runs on past their ends): [200:200+V], [300:300+TE], and
# for training the first T examples that are not validation ones ([0:T] up to T = 200, then on after validation).
GSM8K_TRAIN_START, GSM8K_VAL_START, GSM8K_TEST_START = 0, 200, 300


class DataError(ValueError):
    """Task data is missing, malformed or too small for the requested split."""


@dataclass
class TaskData:
    task: TaskSpec
    train: list[Example]
    val: list[Example]
    test: list[Example]

    @property
    def sizes(self) -> dict[str, int]:
        """The split sizes used, as results.json records them."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


# ---------------------------------------------------------------- local files


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; replace it with the original file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the file's permissions") from None
    if not text.strip():
        raise DataError(f"{path} is empty; replace it with the original file")
    return text


def _as_text(value: Any) -> str | None:
    # BBH targets are strings, but hand-made files may hold bare numbers.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _parse_bbh_file(path: Path) -> list[Example]:
    text = _read_text(path)
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); replace it with the original file") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("examples"), list):
        raise DataError(f'{path} has no "examples" list; expected {{"examples": [{{"input": ..., "target": ...}}]}}')
    if not payload["examples"]:
        raise DataError(f'{path} has an empty "examples" list; add examples or use another --data_dir')
    examples = []
    for index, item in enumerate(payload["examples"]):
        question = _as_text(item.get("input")) if isinstance(item, dict) else None
        target = _as_text(item.get("target")) if isinstance(item, dict) else None
        if question is None or target is None:
            raise DataError(f'{path}: example {index} lacks a text "input" or "target"; fix or replace the file')
        examples.append(Example(question=question, target=target.strip()))
    return examples


def gsm8k_target(answer: str) -> str | None:
    """The final number of a GSM8K solution as a whole number: the text after the last "####", commas
    removed, read by int() (as the reference code reads it); None if that is not a whole number."""
    if "####" not in answer:
        return None
    try:
        return str(int(answer.rsplit("####", 1)[1].replace(",", "").strip()))
    except ValueError:
        return None


def _parse_gsm8k_file(path: Path) -> list[Example]:
    text = _read_text(path)
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number} is not valid JSON ({exc.msg}); replace it with the original file") from None
        question = _as_text(row.get("question")) if isinstance(row, dict) else None
        answer = _as_text(row.get("answer")) if isinstance(row, dict) else None
        if question is None or answer is None:
            raise DataError(f'{path} line {number} lacks a text "question" or "answer"; fix or replace the file')
        target = gsm8k_target(answer)
        if target is None:
            raise DataError(f'{path} line {number}: the answer has no "#### <whole number>" ending; fix or replace the file')
        examples.append(Example(question=question, target=target))
    return examples


def _candidate_dirs(data_dir: str, subfolder: str) -> list[Path]:
    root = Path(data_dir).expanduser()
    return [root, root / subfolder]


def _local_bbh(subtask: str, data_dir: str) -> list[Example] | None:
    for folder in _candidate_dirs(data_dir, "bbh"):
        path = folder / f"{subtask}.json"
        if path.is_file():
            return _parse_bbh_file(path)
    return None


def _local_gsm8k(data_dir: str) -> tuple[list[Example], list[Example]] | None:
    for folder in _candidate_dirs(data_dir, "gsm8k"):
        train, test = folder / "train.jsonl", folder / "test.jsonl"
        if train.is_file() or test.is_file():
            # Half a dataset is a mistake worth reporting, not a reason to go to the hub.
            missing = test if train.is_file() else train
            if not missing.is_file():
                raise DataError(f"found {folder} with only one of train.jsonl/test.jsonl; add {missing.name} there")
            return _parse_gsm8k_file(train), _parse_gsm8k_file(test)
    return None


# ---------------------------------------------------------------- hub


class _HubFailure(Exception):
    """The hub could not deliver; carries a short reason for the combined error."""


def _short_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _hub_rows(path: str, config: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets  # imported here: slow to import and optional for synthetic runs
    except ImportError:
        raise _HubFailure("the datasets package is not installed") from None
    try:
        with _quiet_hub_logging():
            rows = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one combined user error
        raise _HubFailure(_short_reason(exc)) from None
    return [dict(row) for row in rows]


@contextlib.contextmanager
def _quiet_hub_logging() -> Iterator[None]:
    """The hub's and datasets' own retry warnings stay quiet: a failure becomes our one-line error."""
    loggers = [logging.getLogger(name) for name in ("datasets", "huggingface_hub", "fsspec", "urllib3")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _hub_bbh(subtask: str) -> list[Example]:
    rows = _hub_rows("lukaemon/bbh", subtask, "test")
    examples = []
    for row in rows:
        question, target = _as_text(row.get("input")), _as_text(row.get("target"))
        if question is None or target is None:
            raise _HubFailure(f'lukaemon/bbh/{subtask} rows lack "input"/"target"')
        examples.append(Example(question=question, target=target.strip()))
    if not examples:
        raise _HubFailure(f"lukaemon/bbh/{subtask} is empty")
    return examples


def _hub_gsm8k_split(split: str) -> list[Example]:
    examples = []
    for row in _hub_rows("openai/gsm8k", "main", split):
        question, answer = _as_text(row.get("question")), _as_text(row.get("answer"))
        target = gsm8k_target(answer) if answer is not None else None
        if question is None or target is None:
            raise _HubFailure(f'openai/gsm8k {split} rows lack "question" or a "#### <whole number>" answer')
        examples.append(Example(question=question, target=target))
    return examples


def _where(data_dir: str | None, filename: str, subfolder: str) -> str:
    if data_dir is None:
        return "no --data_dir given"
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        return f"--data_dir {root} is not an existing directory"
    return f"no {filename} in --data_dir {root} (or {root / subfolder})"


def load_examples(task: TaskSpec, data_dir: str | None) -> tuple[list[Example], list[Example] | None]:
    """Return (pool, official test split or None) for a task, from --data_dir or else the hub."""
    if task.source == "synthetic":
        return generate_examples(task.name, sum(PAPER_SPLIT), _SYNTHETIC_POOL_SEED), None
    if task.source == "bbh":
        subtask = task.subtask or task.name.removeprefix("BBH_")
        if data_dir is not None:
            local = _local_bbh(subtask, data_dir)
            if local is not None:
                return local, None
        try:
            return _hub_bbh(subtask), None
        except _HubFailure as exc:
            where = _where(data_dir, f"{subtask}.json", "bbh")
            raise DataError(
                f"cannot load {task.name}: {where} and the Hugging Face hub failed ({exc}); "
                "pass --data_dir with the BBH files or enable network access to the hub"
            ) from None
    if task.source == "gsm8k":
        if data_dir is not None:
            local_pair = _local_gsm8k(data_dir)
            if local_pair is not None:
                return local_pair
        try:
            return _hub_gsm8k_split("train"), _hub_gsm8k_split("test")
        except _HubFailure as exc:
            where = _where(data_dir, "train.jsonl/test.jsonl", "gsm8k")
            raise DataError(
                f"cannot load {task.name}: {where} and the Hugging Face hub failed ({exc}); "
                "pass --data_dir with the GSM8K files or enable network access to the hub"
            ) from None
    raise DataError(f"task {task.name} has unknown data source {task.source!r}; use a BBH_, GSM8K or synthetic_ task")


# ---------------------------------------------------------------- splits


def _check_sizes(split_sizes: tuple[int, int, int]) -> tuple[int, int, int]:
    sizes = tuple(split_sizes)
    if len(sizes) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise DataError(
            f"split sizes must be three integers >= 1 (train,val,test), got {split_sizes!r}; "
            "pass e.g. --split_sizes 12,20,20"
        )
    return sizes[0], sizes[1], sizes[2]


def _too_small(task: TaskSpec, what: str, have: int, want: int) -> DataError:
    return DataError(
        f"{task.name} has {have} {what} but --split_sizes asks for {want}; pass smaller --split_sizes"
    )


def paper_split_for(pool_size: int) -> tuple[int, int, int]:
    """The paper's 50/100/100; a smaller pool keeps train 50 and shares the rest equally between
    validation and test (snarks, 178 examples: 50/64/64; an odd remainder leaves one example unused)."""
    n_train, n_val, n_test = PAPER_SPLIT
    if pool_size >= n_train + n_val + n_test:
        return PAPER_SPLIT
    share = (pool_size - n_train) // 2
    return n_train, share, share


def _ordered_slices(pool: list[Example], sizes: tuple[int, int, int]) -> tuple[list[Example], ...]:
    n_train, n_val, n_test = sizes
    return pool[:n_train], pool[n_train:n_train + n_val], pool[n_train + n_val:n_train + n_val + n_test]


def _fixed_shuffle(examples: list[Example]) -> list[Example]:
    shuffled = list(examples)
    random.Random(GSM8K_SHUFFLE_SEED).shuffle(shuffled)
    return shuffled


def gsm8k_split(task: TaskSpec, official_train: list[Example], official_test: list[Example],
                sizes: tuple[int, int, int]) -> TaskData:
    """The reference code's GSM8K split (see GSM8K_VAL_START): train and validation from the shuffled
    official train split, test from the shuffled official test split, at fixed offsets. A train set larger
    than the 200 examples before validation (many clients need one) goes on after the validation slice, so
    the two never share an example."""
    n_train, n_val, n_test = sizes
    if GSM8K_VAL_START + n_val > len(official_train):
        raise _too_small(task, f"training-split examples (validation starts at {GSM8K_VAL_START})",
                         len(official_train), GSM8K_VAL_START + n_val)
    if n_train + n_val > len(official_train):
        raise _too_small(task, "training-split examples (train and validation together)", len(official_train),
                         n_train + n_val)
    if GSM8K_TEST_START + n_test > len(official_test):
        raise _too_small(task, f"test-split examples (test starts at {GSM8K_TEST_START})",
                         len(official_test), GSM8K_TEST_START + n_test)
    train, test = _fixed_shuffle(official_train), _fixed_shuffle(official_test)
    val_end = GSM8K_VAL_START + n_val
    outside_validation = train[GSM8K_TRAIN_START:GSM8K_VAL_START] + train[val_end:]
    return TaskData(task=task, train=outside_validation[:n_train], val=train[GSM8K_VAL_START:val_end],
                    test=test[GSM8K_TEST_START:GSM8K_TEST_START + n_test])


def load_task_data(
    task: TaskSpec,
    data_dir: str | None,
    split_sizes: tuple[int, int, int] | None = None,
    seed: int = 42,
) -> TaskData:
    """Load a task and cut its fixed, disjoint train / val / test split.

    ``split_sizes`` None is the paper's protocol (``paper_split_for``); explicit sizes must fit the
    data. BBH and synthetic tasks are cut in file (generation) order as ordered slices [0:a],
    [a:a+b], [a+b:a+b+c]; GSM8K as the reference code cuts it (``gsm8k_split``). ``seed`` is accepted
    for callers but changes no split: a run's seed moves batches, partitions and client sampling only.
    """
    del seed  # splits are the same for every run seed, so seeds are comparable (and with the paper)
    sizes = None if split_sizes is None else _check_sizes(split_sizes)
    if task.source == "synthetic":
        wanted = sizes or PAPER_SPLIT
        # Generation is prefix-stable, so every split size cuts the same fixed sequence of questions.
        pool, official_test = generate_examples(task.name, sum(wanted), _SYNTHETIC_POOL_SEED), None
    else:
        pool, official_test = load_examples(task, data_dir)
        task = with_kind_from_targets(task, [e.target for e in pool])

    if official_test is not None:
        return gsm8k_split(task, pool, official_test, sizes or PAPER_SPLIT)
    n_train, n_val, n_test = sizes or paper_split_for(len(pool))
    if sizes is None and n_val < 1:
        raise DataError(f"{task.name} has only {len(pool)} examples, too few for the paper's split (train "
                        f"{n_train} plus validation and test); pass --split_sizes that fit")
    if n_train + n_val + n_test > len(pool):
        raise _too_small(task, "examples", len(pool), n_train + n_val + n_test)
    train, val, test = _ordered_slices(pool, (n_train, n_val, n_test))
    return TaskData(task=task, train=train, val=val, test=test)
