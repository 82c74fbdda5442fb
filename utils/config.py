"""Command-line flags, YAML configs and their validation: every bad value is caught here, before any
file is written or any LLM is called."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .tasks import TaskError, check_bbh_subtask

MODULES = ("train_centralized", "train_homo_fed", "train_hetero_fed")
AGGREGATE_METHODS = ("concat", "summarization", "sum_uid")
ENGINE_PREFIXES = ("local", "ollama-", "vllm-", "sglang-")
# Model ids that OpenAI itself serves; any other name needs OPENAI_BASE_URL (another compatible server).
OPENAI_MODEL_PATTERN = re.compile(r"(gpt|chatgpt|o\d|ft:|text-|davinci|babbage|codex|computer-use|omni)", re.I)
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "credential", "credentials"}
REDACTED = "<redacted>"


class UsageError(ValueError):
    """A bad flag, config or input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    # argparse's own error prints the whole usage block; we promise one line and exit code 2.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see python main.py --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _context_size(text: str) -> int:
    value = _positive_int(text)
    if value < 256:
        raise argparse.ArgumentTypeError(f"must be at least 256 tokens to hold a prompt and a reply, got {value}")
    return value


def _split_sizes(text: str) -> tuple[int, int, int]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST such as 12,20,20, got {text!r}")
    return tuple(_positive_int(p) for p in parts)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="main.py",
        description="FedTextGrad: federated prompt optimization with textual gradients.",
        epilog="Modules: train_centralized (TextGrad baseline, one client), train_homo_fed (one task split "
               "across clients), train_hetero_fed (one client per task). Any flag can also be a key in --config.",
    )
    add = p.add_argument
    add("--module", choices=MODULES, help="which experiment to run")
    add("--config", help="YAML file whose keys are flag names; the command line wins")
    add("--task", nargs="+", default=["BBH_object_counting"],
        help="BBH_<subtask>, GSM8K (alias GSM8K_DSPy) or synthetic_{object_counting,word_sorting,"
             "multistep_arithmetic}; several for train_hetero_fed")
    add("--evaluation_engine", default="local", help="model for feedback, optimizer, merging, judging")
    add("--test_engine", default="local", help="model whose system prompt is trained")
    add("--batch_size", type=_positive_int, default=3)
    add("--max_epochs", type=_positive_int, default=3, help="rounds (epochs for train_centralized)")
    add("--max_steps", type=_positive_int, default=3, help="local steps per client per round")
    add("--seed", type=int, default=42)
    add("--aggregate_method", choices=AGGREGATE_METHODS, default="summarization")
    add("--homo_split_num", type=_positive_int, default=3, help="clients of train_homo_fed")
    add("--proximal_update", action="store_true",
        help="keep a new prompt only if its batch accuracy is strictly higher (or perfect)")
    add("--do_not_run_larger_model", action="store_true",
        help="skip the evaluation engine's own zero-shot test accuracy")
    add("--comet_mode", choices=("offline", "online", "disabled"), default="offline")
    add("--comet_project_name", default="fedtextgrad")
    add("--comet_log_path", default=None, help="offline archive folder (default: <output_dir>/comet)")
    add("--data_dir", default=None, help="folder with BBH <subtask>.json and/or GSM8K jsonl (or bbh/, gsm8k/)")
    add("--split_sizes", type=_split_sizes, default=(50, 100, 100), help="TRAIN,VAL,TEST, e.g. 12,20,20")
    add("--partition", choices=("iid", "dirichlet"), default="iid")
    add("--dirichlet_alpha", type=_positive_float, default=1.0)
    add("--clients_per_round", type=_positive_int, default=None, help="default: every client")
    add("--output_dir", default="logs")
    add("--run_name", default=None)
    add("--resume", action="store_true", help="continue --run_name from its last completed round")
    add("--max_concurrency", type=_positive_int, default=16, help="in-flight requests per endpoint")
    add("--request_timeout", type=_positive_float, default=None,
        help="seconds before an LLM request is abandoned and retried (default 600)")
    add("--cache_dir", default=None, help="LLM response cache (default ~/.cache/fedtextgrad)")
    add("--no_cache", action="store_true")
    add("--judge", choices=("string", "llm"), default="string", help="llm: an LLM judges free-form answers")
    add("--max_tokens", type=_positive_int, default=512, help="answer length limit of the test engine")
    # Tiny local models ramble until the limit, so each call kind has its own cap.
    add("--feedback_max_tokens", type=_positive_int, default=256, help="length limit of each feedback call")
    add("--optimizer_max_tokens", type=_positive_int, default=512, help="length limit of each optimizer call")
    add("--merge_max_tokens", type=_positive_int, default=768, help="length limit of each merge call")
    add("--max_context", type=_context_size, default=None,
        help="context window in tokens (prompt + reply) of every engine; default: what the server reports, "
             "else 8192 for the embedded server, 2048 for other self-hosted ones")
    return p


def _config_to_argv(parser: argparse.ArgumentParser, path: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Turn a YAML config into flags, so argparse checks its values exactly as it checks the command line."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist: check the --config path") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" near line {line + 1}" if line is not None else ""
        raise UsageError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of flag names to values")
    return mapping_to_argv(parser, data, path, skip)


def mapping_to_argv(parser: argparse.ArgumentParser, data: dict[str, Any], path: str,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """Flag names -> values (from YAML, or a Flower run config named by `path`) as command-line flags."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for key, value in data.items():
        if key in skip or value == REDACTED:
            continue
        action = actions.get(str(key))
        if action is None or key in ("config", "help"):
            raise UsageError(f"unknown key {key!r} in {path}: keys are flag names such as task, max_steps "
                             "(see python main.py --help)")
        flag = f"--{key}"
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UsageError(f"key {key!r} in {path} must be true or false")
            argv += [flag] if value else []
        elif key == "split_sizes" and isinstance(value, list):
            argv += [flag, ",".join(map(str, value))]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first, _ = parser.parse_known_args(argv)
    config_argv = _config_to_argv(parser, first.config) if first.config else []
    if first.resume and first.run_name:
        # A resumed run continues with the settings it was started with; flags given now still win.
        check_resumable(first)  # before anything else is asked of a run that does not exist
        saved = Path(first.output_dir) / first.run_name / "config.yaml"
        if saved.is_file():
            config_argv = _config_to_argv(parser, str(saved), skip=("config", "resume", "run_name", "output_dir"))
    args = parser.parse_args(config_argv + argv)  # later flags win: the command line beats the file
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    if args.module is None:
        raise UsageError("no --module given: choose one of " + ", ".join(MODULES))
    for flag in ("evaluation_engine", "test_engine"):
        check_engine_name(getattr(args, flag), flag)
    if args.module == "train_hetero_fed" and len(args.task) < 2:
        raise UsageError("train_hetero_fed needs two or more --task values (one client per task)")
    if args.module != "train_hetero_fed" and len(args.task) != 1:
        raise UsageError(f"{args.module} takes exactly one --task; use train_hetero_fed for several tasks")
    if len(set(args.task)) != len(args.task):
        raise UsageError("--task lists a task twice: name each task once")
    for task in args.task:
        try:
            check_bbh_subtask(task, args.data_dir)
        except TaskError as exc:
            raise UsageError(str(exc)) from None
    clients = num_clients(args)
    if args.clients_per_round is not None and args.clients_per_round > clients:
        raise UsageError(f"--clients_per_round {args.clients_per_round} exceeds the {clients} clients of "
                         f"this run: lower it or raise --homo_split_num")
    if args.resume:
        check_resumable(args)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a folder: point it at the folder holding the "
                         "task files")
    if args.comet_mode == "online" and not os.environ.get("COMET_API_KEY"):
        raise UsageError("--comet_mode online needs COMET_API_KEY: export it, or use --comet_mode offline")
    for flag in ("output_dir", "cache_dir", "comet_log_path"):
        value = getattr(args, flag)
        if value is not None and not _writable(Path(value)):
            raise UsageError(f"--{flag} {value} is not writable: choose a folder you can write to")


def check_resumable(args: argparse.Namespace) -> None:
    if not args.run_name:
        raise UsageError("--resume needs --run_name naming the run to continue")
    run_dir = Path(args.output_dir) / args.run_name
    # config.yaml alone is a run that stopped before its first checkpoint: it resumes from the start.
    if not (run_dir / "checkpoint.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise UsageError(f"nothing to resume: there is no run {args.run_name!r} in {args.output_dir} ({run_dir} "
                         "holds no started run); check --run_name and --output_dir, or drop --resume to start it")


def check_engine_name(name: str, flag: str = "engine") -> None:
    choices = "use local, ollama-<model>, vllm-<model>, sglang-<model> or an OpenAI model such as gpt-4o"
    for prefix in ENGINE_PREFIXES[1:]:
        if name.startswith(prefix) and not name[len(prefix):]:
            raise UsageError(f"--{flag} {name!r} names no model: write it as {prefix}<model>")
    if not name.strip() or any(c.isspace() for c in name):
        raise UsageError(f"--{flag} {name!r} is not an engine name: {choices}")
    if name == "local" or name.startswith(ENGINE_PREFIXES[1:]):
        return
    head = name.split("-", 1)[0].lower()
    near = difflib.get_close_matches(head, [p.rstrip("-") for p in ENGINE_PREFIXES], n=1, cutoff=0.6)
    if "-" in name and near:
        raise UsageError(f"--{flag} {name!r} has an unknown engine prefix {head + '-'!r}: {choices} "
                         f"(did you mean {near[0]}?)")
    if not os.environ.get("OPENAI_BASE_URL") and not OPENAI_MODEL_PATTERN.match(name):
        raise UsageError(f"--{flag} {name!r} is not a known engine: {choices}, or set OPENAI_BASE_URL to serve "
                         "other names from an OpenAI-compatible server")


def num_clients(args: argparse.Namespace) -> int:
    return {"train_centralized": 1, "train_homo_fed": args.homo_split_num}.get(args.module, len(args.task))


def _writable(path: Path) -> bool:
    """True if path is (or could be created as) a writable folder; creates nothing."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _looks_secret(name: str) -> bool:
    # By whole words: api_key and auth_token are secrets, feedback_max_tokens is not.
    return bool(SECRET_WORDS & set(name.lower().split("_")))


def secret_values() -> list[str]:
    """Values of secret-looking environment variables (OPENAI_API_KEY, VLLM_API_KEY, COMET_API_KEY, ...)."""
    return [v for k, v in os.environ.items() if _looks_secret(k) and len(v) >= 8]


def unused_flags(module: str | None) -> tuple[str, ...]:
    """Flags a module never reads, left out of its config.yaml so it records only what shaped the run."""
    return () if module == "train_homo_fed" else ("homo_split_num",)


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as saved to config.yaml: secret-named flags, and any value holding a key from the
    environment (a key pasted into --run_name, say), are redacted."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
              if k not in unused_flags(args.module)}
    secrets = secret_values()
    for key, value in config.items():
        if _looks_secret(key) or any(secret in str(value) for secret in secrets):
            config[key] = REDACTED
    return config
