"""Bad input sweep: every case runs `python main.py` in its own process and must end with exit code 2,
exactly one stderr line "error: ..." naming the problem (no traceback), and no file written anywhere.
An LLM endpoint that is down at start is one more such case.

The processes are started together by a module fixture (each spends about a second importing), then
one parametrised test checks each case's outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Engines on a closed port: if a case wrongly passed validation it would fail fast at the engine check,
# and the expected words below would not match that message.
FAKE = ["--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model"]
HOMO = ["--module", "train_homo_fed", "--task", "synthetic_object_counting", *FAKE]


def homo(*flags: str) -> Callable[[Path], list[str]]:
    return lambda root: [*HOMO, *flags]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bbh_dir(root: Path, content: str) -> list[str]:
    write(root / "data" / "object_counting.json", content)
    return ["--module", "train_homo_fed", "--task", "BBH_object_counting", "--data_dir", str(root / "data"), *FAKE]


def gsm8k_dir(root: Path, train: str, test: str | None = '{"question": "q", "answer": "#### 1"}\n') -> list[str]:
    write(root / "data" / "gsm8k" / "train.jsonl", train)
    if test is not None:
        write(root / "data" / "gsm8k" / "test.jsonl", test)
    return ["--module", "train_centralized", "--task", "GSM8K", "--data_dir", str(root / "data"), *FAKE]


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Nine lines whose last one would expand to 9^9 strings (a "billion laughs").
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True)) + \
    "task: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"


def config(root: Path, text: str) -> list[str]:
    return ["--config", str(write(root / "bad.yaml", text))]


def started_run(root: Path) -> list[str]:
    write(root / "out" / "taken" / "config.yaml", "module: train_homo_fed\n")
    return [*HOMO, "--run_name", "taken"]


class Case(NamedTuple):
    name: str
    argv: Callable[[Path], list[str]]  # builds the command line (and any input files) under a folder
    words: str  # the error line must contain this: it names the problem


CASES = [
    Case("no_module", lambda r: ["--task", "synthetic_object_counting"], "--module"),
    Case("unknown_module", lambda r: ["--module", "train_magic"], "--module"),
    Case("unknown_task", homo("--task", "object_counting"), "unknown task"),
    # A typo is caught at once (no hub retries: HF_HUB_OFFLINE is not what saves it), naming the subtask meant.
    Case("bbh_typo", homo("--task", "BBH_object_countin"), "did you mean BBH_object_counting?"),
    Case("bbh_typo_with_data_dir", homo("--task", "BBH_word_sortng", "--data_dir", str(SHARED_DATA)),
         "nor a file word_sortng.json in --data_dir"),
    Case("unknown_engine_prefix", homo("--test_engine", "olama-llama3"), "unknown engine prefix"),
    Case("unknown_engine", homo("--evaluation_engine", "llama3"), "not a known engine"),
    Case("engine_without_model", homo("--test_engine", "vllm-"), "names no model"),
    Case("unknown_aggregation", homo("--aggregate_method", "average"), "--aggregate_method"),
    Case("hetero_one_task", homo("--module", "train_hetero_fed"), "two or more --task"),
    Case("missing_data_file", lambda r: [*bbh_dir(r, "{}"), "--task", "BBH_word_sorting"], "word_sorting.json"),
    Case("data_dir_missing", lambda r: [*HOMO, "--data_dir", str(r / "nowhere")], "--data_dir"),
    Case("empty_json", lambda r: bbh_dir(r, ""), "is empty"),
    Case("malformed_json", lambda r: bbh_dir(r, '{"examples": [{"input": "a", '), "not valid JSON"),
    Case("json_without_examples", lambda r: bbh_dir(r, '{"rows": []}'), '"examples"'),
    Case("json_example_without_target", lambda r: bbh_dir(r, '{"examples": [{"input": "a"}]}'), "target"),
    Case("malformed_jsonl", lambda r: gsm8k_dir(r, '{"question": "q", "answer": "#### 1"}\n{"question": \n'),
         "line 2 is not valid JSON"),
    Case("jsonl_without_final_answer", lambda r: gsm8k_dir(r, '{"question": "q", "answer": "42"}\n'), "####"),
    Case("jsonl_half_dataset", lambda r: gsm8k_dir(r, '{"question": "q", "answer": "#### 1"}\n', None),
         "test.jsonl"),
    Case("split_larger_than_data", lambda r: ["--module", "train_homo_fed", "--task", "BBH_object_counting",
                                              "--data_dir", str(SHARED_DATA), "--split_sizes", "200,100,100",
                                              *FAKE], "--split_sizes"),
    # GSM8K's 7,473 training-split examples hold train and validation together.
    Case("gsm8k_train_and_validation_too_large", lambda r: ["--module", "train_centralized", "--task", "GSM8K",
                                                            "--data_dir", str(SHARED_DATA), "--split_sizes",
                                                            "7400,100,5", *FAKE], "train and validation together"),
    Case("top_p_zero", homo("--top_p", "0"), "--top_p"),
    Case("temperature_of_unknown_role", homo("--temperature", "critic=0.5"), "unknown role 'critic'"),
    Case("initial_prompt_file_missing", lambda r: [*HOMO, "--initial_prompt", f"@{r / 'absent.txt'}"],
         "cannot read the prompt file"),
    Case("initial_prompt_file_empty", lambda r: [*HOMO, "--initial_prompt", f"@{write(r / 'empty.txt', ' ')}"],
         "is empty"),
    # The paper's default split shrinks to fit snarks (178 examples); the same sizes given explicitly do not.
    Case("explicit_split_too_large_for_snarks", lambda r: ["--module", "train_centralized", "--task", "BBH_snarks",
                                                           "--data_dir", str(SHARED_DATA), "--split_sizes",
                                                           "50,100,100", *FAKE], "has 178 examples"),
    Case("split_zero", homo("--split_sizes", "0,5,5"), "--split_sizes"),
    Case("split_two_numbers", homo("--split_sizes", "5,5"), "--split_sizes"),
    Case("zero_batch_size", homo("--batch_size", "0"), "--batch_size"),
    Case("negative_max_steps", homo("--max_steps", "-2"), "--max_steps"),
    Case("zero_rounds", homo("--max_epochs", "0"), "--max_epochs"),
    Case("negative_alpha", homo("--dirichlet_alpha", "-1"), "--dirichlet_alpha"),
    Case("zero_concurrency", homo("--max_concurrency", "0"), "--max_concurrency"),
    Case("zero_request_timeout", homo("--request_timeout", "0"), "--request_timeout"),
    Case("tiny_context_window", homo("--max_context", "10"), "--max_context"),
    Case("text_for_number", homo("--homo_split_num", "three"), "--homo_split_num"),
    Case("more_clients_per_round_than_clients", homo("--clients_per_round", "5"),
         "--clients_per_round"),
    Case("invalid_yaml", lambda r: [*HOMO, *config(r, "task: [unclosed\nmax_steps: 2\n")], "not valid YAML"),
    Case("unknown_config_key", lambda r: [*HOMO, *config(r, "max_step: 3\n")], "unknown key 'max_step'"),
    Case("config_not_a_mapping", lambda r: [*HOMO, *config(r, "- max_steps\n- 3\n")], "mapping"),
    Case("config_bad_value", lambda r: [*HOMO, *config(r, "max_steps: many\n")], "--max_steps"),
    Case("config_missing", lambda r: [*HOMO, "--config", str(r / "absent.yaml")], "does not exist"),
    Case("resume_nothing", homo("--resume", "--run_name", "ghost"), "nothing to resume"),
    Case("resume_no_such_run", lambda r: ["--resume", "--run_name", "nope"], "there is no run 'nope'"),
    Case("resume_without_run_name", homo("--resume"), "--run_name"),
    Case("run_name_taken", started_run, "already holds a run"),
    Case("output_dir_under_a_file", lambda r: [*HOMO, "--output_dir", str(write(r / "file.txt", "x") / "out")],
         "--output_dir"),
    # A folder that cannot be created although permissions allow it (root may write anywhere but /proc).
    Case("output_dir_cannot_be_created", homo("--output_dir", "/proc/nope"), "--output_dir /proc/nope"),
    # The run folder is <output_dir>/<run_name>: each of these would put it elsewhere.
    Case("run_name_climbs_out", homo("--run_name", "../escape_run"), "--run_name '../escape_run'"),
    Case("run_name_absolute", lambda r: [*HOMO, "--run_name", str(r / "elsewhere")], "not a plain folder name"),
    Case("run_name_with_separator", homo("--run_name", "sweep/one"), "--run_name 'sweep/one'"),
    Case("run_name_dot_dot", homo("--run_name", ".."), "--run_name '..'"),
    Case("run_name_dot", homo("--run_name", "."), "--run_name '.'"),
    Case("run_name_in_config", lambda r: [*HOMO, *config(r, "run_name: ../up\n")], "--run_name '../up'"),
    Case("resume_run_name_climbs_out", lambda r: [*started_run(r), "--resume", "--run_name", "../out/taken"],
         "--run_name '../out/taken'"),
    Case("endpoint_down_at_start", lambda r: HOMO, "cannot reach the vllm endpoint"),
    Case("cache_dir_is_a_file", lambda r: [*HOMO, "--cache_dir", str(write(r / "cache", "x"))], "--cache_dir"),
    # Values that parse but are no numbers to run with, and configs that are no configs.
    Case("nan_in_config", lambda r: [*HOMO, *config(r, "screen_margin: .nan\n")], "--screen_margin: must be between"),
    Case("infinite_timeout_in_config", lambda r: [*HOMO, *config(r, "request_timeout: .inf\n")], "--request_timeout"),
    Case("nan_flag", homo("--dirichlet_alpha", "nan"), "--dirichlet_alpha"),
    Case("absurd_rounds", homo("--max_epochs", "1000000000", "--estimate"), "--max_epochs 1000000000 is more than"),
    Case("absurd_seed", homo("--seed", str(2**70)), "--seed"),
    Case("absurd_price", homo("--estimate", "--price_in", "inf"), "--price_in"),
    Case("binary_config", lambda r: [*HOMO, "--config", str(write_bytes(r / "bad.yaml", bytes(range(256)) * 8))],
         "is not a text file"),
    Case("alias_bomb_config", lambda r: [*HOMO, *config(r, ALIAS_BOMB)], "YAML aliases"),
    Case("nested_config_value", lambda r: [*HOMO, *config(r, "task: [[synthetic_object_counting]]\n")],
         "must be a number, text, true/false or a list of them"),
    Case("config_too_large", lambda r: [*HOMO, *config(r, "# padding\n" * 120_000)], "larger than 1 MB"),
    Case("config_is_a_folder", lambda r: [*HOMO, "--config", str(r)], "cannot be read"),
]


# Run with the hub reachable in principle: a typo must not wait on it.
HUB_ONLINE = ("bbh_typo",)


class Outcome(NamedTuple):
    code: int
    stdout: str
    stderr: str
    before: dict[str, float]
    after: dict[str, float]


def snapshot(root: Path) -> dict[str, float]:
    """Every file and folder under root with its modification time: what 'nothing written' compares."""
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


def run_case(case: Case, root: Path) -> Outcome:
    root.mkdir(parents=True)
    argv = case.argv(root)
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(root / "out")]
    if "--cache_dir" not in argv:
        argv += ["--cache_dir", str(root / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VLLM_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1" if case.name not in HUB_ONLINE else "0", VLLM_BASE_URL="http://127.0.0.1:9/v1", FEDTEXTGRAD_CACHE_DIR=str(root / "cache"))
    before = snapshot(root)
    done = subprocess.run([sys.executable, str(REPO / "main.py"), *argv], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    return Outcome(done.returncode, done.stdout, done.stderr, before, snapshot(root))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad-input")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case.name: pool.submit(run_case, case, base / case.name) for case in CASES}
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    lines = outcome.stderr.splitlines()
    assert outcome.code == 2, outcome.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert case.words in lines[0]
    assert outcome.after == outcome.before  # no file or folder created or touched, in any folder


@pytest.mark.parametrize("name", ["sweep-1_a.b+c=d", ".hidden", "GSM8K+BBH_object_counting-seed42", "n" * 255])
def test_plain_run_names_are_accepted(name: str, tmp_path: Path) -> None:
    from utils.config import parse_args

    assert parse_args([*HOMO, "--run_name", name, "--output_dir", str(tmp_path)]).run_name == name


@pytest.mark.parametrize("name", ["n" * 256, "two words", "naïve", "back\\slash", "a..b", "~", "$HOME", "run\n"])
def test_run_names_that_are_not_one_plain_component_are_refused(name: str, tmp_path: Path) -> None:
    from utils.config import UsageError, parse_args

    with pytest.raises(UsageError, match="is not a plain folder name"):
        parse_args([*HOMO, "--run_name", name, "--output_dir", str(tmp_path)])


def test_output_folder_that_fails_when_made_is_one_line_exit_2(tmp_path: Path) -> None:
    """Past the up-front check (an existing folder root may write to, where no folder can be made) the
    run folder itself fails: still one line and exit 2, with the endpoint up so the run gets that far."""
    from bench.fake_server import FakeServer

    with FakeServer() as server:
        env = {**os.environ, "VLLM_BASE_URL": server.base_url, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([sys.executable, str(REPO / "main.py"), *HOMO, "--output_dir", "/proc",
                               "--cache_dir", str(tmp_path / "cache"), "--comet_mode", "disabled"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "--output_dir" in done.stderr
