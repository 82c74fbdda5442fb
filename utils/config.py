"""Command-line flags, YAML configs and their validation: every bad value is caught here, before any
file is written or any LLM is called."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

# The engine-name grammar is textgrad.serving.backends' (a cheap import: no LLM client library loads with it).
from textgrad.serving.backends import engine_name_problem, missing_key_problem
from utils.federated.sampling import temperature_entry, top_p_entry
from utils.privacy.attacks import ATTACKS
from utils.privacy.leakage import LEAK_GUARDS
from utils.tasks.registry import TaskError, check_bbh_subtask, initial_prompt_text

from .files import writable_folder
from .flag_names import Aliased, key_problem, names_problem
from .flag_values import context_size as _context_size
from .flag_values import limit_problem
from .flag_values import positive_float as _positive_float
from .flag_values import positive_int as _positive_int
from .flag_values import price as _price
from .flag_values import split_sizes as _split_sizes
from .flag_values import within as _within
from .run_config import REDACTED, RunConfig

MODULES = ("train_centralized", "train_homo_fed", "train_hetero_fed")
AGGREGATE_METHODS = ("concat", "summarization", "sum_uid")
OPTIMIZERS = ("tgd", "tgd_momentum")  # utils.federated.client.make_optimizer
# A run name is one plain folder name inside --output_dir: no separator, no "..", nothing a shell or a
# filesystem treats specially.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.+=-]{1,255}")


class UsageError(ValueError):
    """A bad flag, config or input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    # argparse's own error prints the whole usage block; we promise one line and exit code 2.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see python main.py --help)")


class _HelpFormatter(argparse.HelpFormatter):
    """Each flag's help with its default (a switch's is "off"), unless the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {str(default).replace('%', '%%')})".lstrip()


def _run_config(namespace: argparse.Namespace, source: str | None) -> RunConfig:
    """The parsed flags as a RunConfig; with a source, a setting given under two names is checked."""
    problem = names_problem(namespace, source)
    if problem:
        raise UsageError(problem)
    return RunConfig.from_namespace(namespace)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="main.py", formatter_class=_HelpFormatter,
        usage="python main.py --module MODULE [--task TASK ...] [--config FILE.yaml] [flags]",
        description="FedTextGrad: federated prompt optimization with textual gradients.",
        epilog="Modules: train_centralized (TextGrad baseline, one client), train_homo_fed (one task split "
               "across clients), train_hetero_fed (one client per task). Any flag can also be a key in --config.",
    )
    # Flags are added in RunConfig's field order (utils/run_config.py), each to its group of --help.
    run = p.add_argument_group("run", "what to train, on which data, for how long").add_argument
    federated = p.add_argument_group("federated", "the clients, their data and the merge").add_argument
    engines = p.add_argument_group("engines", "the models, their endpoints, caches and length limits").add_argument
    outputs = p.add_argument_group("outputs", "the run folder <output_dir>/<run_name>/ and comet_ml").add_argument
    estimate = p.add_argument_group("estimate", "the bill before the run: calls, tokens, time, money; "
                                                "no LLM is called").add_argument
    run("--module", choices=MODULES, help="which experiment to run (required)")
    run("--config", help="YAML file whose keys are flag names; the command line wins (default: none)")
    run("--task", nargs="+", default=["BBH_object_counting"],
        help="BBH_<subtask>, GSM8K (alias GSM8K_DSPy) or an offline synthetic_<name> task (docs/method.md lists "
             "them; the quickstart's is synthetic_first_last_word); several for train_hetero_fed")
    engines("--evaluation_engine", default="local", help="model for feedback, optimizer, merging, judging")
    engines("--test_engine", default="local", help="model whose system prompt is trained")
    run("--batch_size", type=_positive_int, default=3, help="training examples per local step")
    run("--rounds", "--max_epochs", dest="max_epochs", action=Aliased, type=_positive_int, default=3, metavar="N",
        help="rounds of the run (epochs of train_centralized); --max_epochs is the reference code's name for it")
    run("--max_steps", type=_positive_int, default=3, help="local steps per client per round")
    run("--seed", type=int, default=42, help="batches, partitions and client sampling (never the splits)")
    federated("--aggregate_method", choices=AGGREGATE_METHODS, default="summarization",
              help="how the server merges the clients' prompts")
    federated("--homo_split_num", type=_positive_int, default=3, help="clients of train_homo_fed")
    run("--proximal_update", action="store_true",
        help="keep a new prompt only if its batch accuracy is strictly higher (or perfect)")
    run("--optimizer", choices=OPTIMIZERS, default="tgd",
        help="tgd (the paper's), or tgd_momentum: TGD that also shows the optimizer the client's earlier steps "
             "of the round and their feedback")
    run("--momentum_window", type=_positive_int, default=3,
        help="earlier steps tgd_momentum shows (the history starts empty every round)")
    run("--do_not_run_larger_model", action="store_true",
        help="skip the evaluation engine's own zero-shot test accuracy")
    outputs("--comet_mode", choices=("offline", "online", "disabled"), default="offline",
            help="online needs COMET_API_KEY")
    outputs("--comet_project_name", default="fedtextgrad", help="comet_ml project")
    outputs("--comet_log_path", default=None, help="offline archive folder (default: <output_dir>/comet)")
    run("--data_dir", default=None, help="folder with BBH <subtask>.json and/or GSM8K jsonl (or bbh/, gsm8k/); "
                                          "default: the Hugging Face hub")
    run("--split_sizes", type=_split_sizes, default=None,
        help="TRAIN,VAL,TEST, e.g. 12,20,20 (default: the paper's 50,100,100; a BBH subtask with fewer than "
             "250 examples keeps train 50 and shares the rest equally between validation and test)")
    federated("--partition", choices=("iid", "dirichlet"), default="iid", help="how train_homo_fed shards a task")
    federated("--dirichlet_alpha", type=_positive_float, default=1.0,
              help="skew of --partition dirichlet by answer value: smaller is more skewed")
    federated("--clients_per_round", type=_positive_int, default=None,
              help="clients chosen (seeded) each round (default: every client)")
    outputs("--output_dir", default="logs", help="where run folders go")
    outputs("--run_name", default=None, help="the run folder's name (default: module, tasks, method, seed, time)")
    outputs("--resume", action="store_true", help="continue --run_name from its last completed round")
    outputs("--plots", action="store_true",
            help="draw the run's plots as it ends (any time later: python -m utils.reporting.plots RUN_DIR)")
    engines("--max_concurrency", type=_positive_int, default=16, help="in-flight requests per endpoint")
    engines("--local_servers", type=_positive_int, default=None,
            help="llama.cpp servers of the embedded `local` engine (default: LOCAL_SERVERS, else one per core, "
                 "at most 4; 1 = a single server)")
    engines("--request_timeout", type=_positive_float, default=None,
            help="seconds an LLM request may take in all, waiting and reading included, before it is "
                 "abandoned and retried (default 300)")
    engines("--cache_dir", default=None, help="LLM response cache (default ~/.cache/fedtextgrad)")
    engines("--no_cache", action="store_true", help="send every request, answer none from the cache")
    run("--judge", choices=("string", "llm"), default="string", help="llm: the evaluation engine judges every answer")
    run("--initial_prompt", type=initial_prompt_text, default=None, metavar="TEXT|@FILE",
        help="the instructions every client starts from (default: ours; each task's format line is added)")
    engines("--max_tokens", type=_positive_int, default=512, help="answer length limit of the test engine")
    # Tiny local models ramble until the limit, so each call kind has its own cap.
    engines("--feedback_max_tokens", type=_positive_int, default=256, help="length limit of each feedback call")
    engines("--optimizer_max_tokens", type=_positive_int, default=512, help="length limit of each optimizer call")
    engines("--merge_max_tokens", type=_positive_int, default=768, help="length limit of each merge call")
    for flag, entry, default in (("temperature", temperature_entry, 0), ("top_p", top_p_entry, "the server's")):
        engines(f"--{flag}", nargs="+", type=entry, default=None, metavar="[ROLE=]VALUE",
                help=f"{flag} of every role, or ROLE=VALUE for one of answer, feedback, optimizer, merge, judge "
                     f"(default: {default})")
    engines("--structured_output", choices=("auto", "on", "off"), default="auto",
            help="optimizer, merge and judge replies as a one-field JSON object through the backend's structured "
                 "output: auto (where the backend has it; tags after a server rejects it), on (a rejection is an "
                 "error), off (tags)")
    engines("--max_context", type=_context_size, default=None,
            help="context window in tokens (prompt + reply) of every engine; default: what the server reports, "
                 "else 8192 for the embedded server, 2048 for other self-hosted ones")
    engines("--max_prompt_tokens", type=_positive_int, default=None,
            help="budget of a merged prompt in tokens: each merge request states it and asks again once when a "
                 "merge comes back longer (default: a fifth of the smaller context window of the two engines)")
    # The bill before the run (utils.estimate).
    estimate("--estimate", action="store_true",
             help="check everything, print calls, tokens, time and money per phase and engine; call no LLM")
    estimate("--estimate_latency", type=_positive_float, default=None, metavar="SECONDS",
             help="seconds per call for the time estimate (default: measured in finished runs of the engine)")
    estimate("--price_in", nargs="+", type=_price, default=None, metavar="[ENGINE=]USD",
             help="USD per million prompt tokens, for every engine or ENGINE=USD for one (default: "
                  "utils/estimate/prices.py for OpenAI models)")
    estimate("--price_out", nargs="+", type=_price, default=None, metavar="[ENGINE=]USD",
             help="USD per million completion tokens, given as for --price_in (default: utils/estimate/prices.py "
                  "for OpenAI models)")
    estimate("--estimate_json", default=None, metavar="FILE",
             help="with --estimate, also write the estimate here (default: not written)")
    _add_privacy_and_robustness_flags(p)
    return p


def default_run_config() -> RunConfig:
    """Every flag at its default (module None): what a run is before any flag is given."""
    return _run_config(build_parser().parse_args([]), None)


# ---------------------------------------------------------------- privacy and robustness
ROBUST_AGGREGATIONS = ("none", "screen")


def _add_privacy_and_robustness_flags(p: argparse.ArgumentParser) -> None:
    add = p.add_argument_group("robustness and privacy", "what leaves a client, simulated attackers, and the "
                                                          "server's defence").add_argument
    add("--leak_guard", choices=LEAK_GUARDS, default="redact",
        help="what a client does with text copied from its own examples before its update leaves: off (send it, "
             "audit only), redact (remove each copied span), reject (send the round's start prompt instead)")
    add("--leak_min_words", type=_positive_int, default=8,
        help="consecutive words copied from one example that the leak guard acts on")
    add("--malicious_clients", type=_within(int, 0, None, "a whole number"), default=0,
        help="simulated poisoned clients (chosen from --seed) that send an --attack prompt instead of their own")
    add("--attack", choices=ATTACKS, default="inject",
        help="inject: an instruction forcing one fixed wrong answer; noise: unrelated text")
    add("--robust_aggregation", choices=ROBUST_AGGREGATIONS, default="none",
        help="screen: leave out client prompts that score far below the round's best on a validation sample")
    add("--screen_size", type=_positive_int, default=5, help="validation questions per task that screening asks")
    add("--screen_margin", type=_within(float, 0, 1, "an accuracy difference from 0 to 1"), default=0.2,
        help="screening leaves out prompts whose accuracy is below the round's best by more than this")


# A config holds a few dozen flags. Past these it is not one (a data file given by mistake, or a YAML "billion
# laughs" whose aliases expand to gigabytes), and it is refused before it is expanded.
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_ALIASES = 64


def _load_yaml(path: str) -> Any:
    """The YAML document of a config file; UsageError for a missing, large, binary, alias-heavy or invalid one."""
    import yaml  # only for a config file: a run without one sends its first request sooner

    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist: check the --config path") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read ({exc.strerror}): check the --config path") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1_000_000} MB: a config holds "
                         "flag names and values, check the --config path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not a text file (not UTF-8): give a YAML file of flag names "
                         "and values") from None
    try:
        aliases = sum(isinstance(token, yaml.AliasToken) for token in yaml.scan(text, Loader=yaml.SafeLoader))
        if aliases > MAX_CONFIG_ALIASES:
            raise UsageError(f"config file {path} uses {aliases} YAML aliases (*name), more than "
                             f"{MAX_CONFIG_ALIASES}: write the values out")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" near line {line + 1}" if line is not None else ""
        raise UsageError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    except RecursionError:
        raise UsageError(f"config file {path} nests too deeply: a config is a flat mapping of flag names to "
                         "values") from None


def _config_to_argv(parser: argparse.ArgumentParser, path: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Turn a YAML config into flags, so argparse checks its values exactly as it checks the command line."""
    data = _load_yaml(path)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of flag names to values")
    return mapping_to_argv(parser, data, path, skip)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def mapping_to_argv(parser: argparse.ArgumentParser, data: dict[str, Any], path: str,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """Flag names -> values (from YAML, or a Flower run config named by `path`) as command-line flags. A
    setting with two names (rounds, max_epochs) may be given under either, not under both with two values."""
    actions = {name.lstrip("-"): a for a in parser._actions for name in a.option_strings}
    argv: list[str] = []
    seen: dict[str, tuple[str, Any]] = {}  # dest -> the first key that gave it, and its value
    for key, value in data.items():
        if key in skip or value == REDACTED:
            continue
        action = actions.get(str(key))
        if action is None or action.dest in ("config", "help"):
            raise UsageError(f"unknown key {key!r} in {path}: keys are flag names such as task, max_steps "
                             "(see python main.py --help)")
        problem = key_problem(seen, action.dest, key, value, path)
        if problem:
            raise UsageError(problem)
        flag = f"--{key}"
        if not (_is_scalar(value) or isinstance(value, list) and all(map(_is_scalar, value))):
            what = "a list of lists or mappings" if isinstance(value, list) else f"a {type(value).__name__}"
            raise UsageError(f"key {key!r} in {path} must be a number, text, true/false or a list of them, not "
                             f"{what}")
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


def parse_args(argv: list[str] | None = None) -> RunConfig:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = _run_config(parser.parse_known_args(argv)[0], "the command line")
    config_argv = _config_to_argv(parser, first.config) if first.config else []
    if first.resume and first.run_name:
        check_run_name(first.run_name)  # before it names a file to read
        # A resumed run continues with the settings it was started with; flags given now still win.
        check_resumable(first)  # before anything else is asked of a run that does not exist
        saved = Path(first.output_dir) / first.run_name / "config.yaml"
        if saved.is_file():
            config_argv = _config_to_argv(parser, str(saved), skip=("config", "resume", "run_name", "output_dir"))
    # Later flags win: the command line beats the file.
    args = _run_config(parser.parse_args(config_argv + argv), None)
    validate_args(args)
    return args


def validate_args(args: RunConfig) -> None:
    if args.module is None:
        raise UsageError("no --module given: choose one of " + ", ".join(MODULES))
    if (problem := limit_problem(args)) is not None:
        raise UsageError(problem)
    for flag in ("evaluation_engine", "test_engine"):
        check_engine_name(getattr(args, flag), flag, needs_key=not args.estimate)  # an estimate calls nothing
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
    if args.run_name:
        check_run_name(args.run_name)
    if args.malicious_clients > clients:
        raise UsageError(f"--malicious_clients {args.malicious_clients} exceeds the {clients} clients of this run: "
                         "lower it or add clients")
    if args.resume:
        check_resumable(args)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data_dir {args.data_dir} is not a folder: point it at the folder holding the "
                         "task files")
    if args.comet_mode == "online" and not os.environ.get("COMET_API_KEY"):
        raise UsageError("--comet_mode online needs COMET_API_KEY: export it, or use --comet_mode offline")
    for flag in ("output_dir", "cache_dir", "comet_log_path"):
        value = getattr(args, flag)
        if value is not None and not writable_folder(Path(value)):
            raise UsageError(f"--{flag} {value} is not writable: choose a folder you can write to")


def check_resumable(args: RunConfig) -> None:
    if not args.run_name:
        raise UsageError("--resume needs --run_name naming the run to continue")
    run_dir = Path(args.output_dir) / args.run_name
    # config.yaml alone is a run that stopped before its first checkpoint: it resumes from the start.
    if not (run_dir / "checkpoint.json").is_file() and not (run_dir / "config.yaml").is_file():
        raise UsageError(f"nothing to resume: there is no run {args.run_name!r} in {args.output_dir} ({run_dir} "
                         "holds no started run); check --run_name and --output_dir, or drop --resume to start it")


def check_run_name(name: str) -> None:
    """The run folder is <output_dir>/<run_name>: a name that is not one plain component would put it
    elsewhere (../x, /abs/x, a/b)."""
    if not RUN_NAME_PATTERN.fullmatch(name) or ".." in name or name == ".":
        raise UsageError(f"--run_name {name!r} is not a plain folder name: use letters, digits and -_.+= "
                         "only (no '/', no '..', not '.', at most 255 characters)")


def check_engine_name(name: str, flag: str = "engine", needs_key: bool = False) -> None:
    problem = engine_name_problem(name) or (missing_key_problem(name) if needs_key else None)
    if problem is not None:
        raise UsageError(f"--{flag} {name!r} {problem}")


def num_clients(args: RunConfig) -> int:
    return {"train_centralized": 1, "train_homo_fed": args.homo_split_num}.get(args.module, len(args.task))
