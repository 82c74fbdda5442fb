"""RunConfig: a run's settings, one typed field per main.py flag, built once from the parsed flags.

The parser (utils.config.build_parser) is the one source of flags, defaults and checks; this class only
gives what it produced a type and keeps it from changing. A derived config is a dataclasses.replace.
Fields stand in the parser's order, which is also the key order of a run's config.yaml, which
resolved_config writes with every secret redacted.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from typing import Any

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "credential", "credentials"}
REDACTED = "<redacted>"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    module: str | None
    config: str | None
    task: list[str]
    evaluation_engine: str
    test_engine: str
    batch_size: int
    max_epochs: int
    max_steps: int
    seed: int
    aggregate_method: str
    homo_split_num: int
    proximal_update: bool
    optimizer: str
    momentum_window: int
    do_not_run_larger_model: bool
    comet_mode: str
    comet_project_name: str
    comet_log_path: str | None
    data_dir: str | None
    split_sizes: tuple[int, int, int] | None
    partition: str
    dirichlet_alpha: float
    clients_per_round: int | None
    output_dir: str
    run_name: str | None
    resume: bool
    plots: bool
    max_concurrency: int
    local_servers: int | None
    request_timeout: float | None
    cache_dir: str | None
    no_cache: bool
    judge: str
    initial_prompt: str | None
    max_tokens: int
    feedback_max_tokens: int
    optimizer_max_tokens: int
    merge_max_tokens: int
    temperature: list[str] | None
    top_p: list[str] | None
    structured_output: str
    max_context: int | None
    max_prompt_tokens: int | None
    estimate: bool
    estimate_latency: float | None
    price_in: list[str] | None
    price_out: list[str] | None
    estimate_json: str | None
    leak_guard: str
    leak_min_words: int
    malicious_clients: int
    attack: str
    robust_aggregation: str
    screen_size: int
    screen_margin: float

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> RunConfig:
        """The parsed flags; a flag the parser has and this class lacks (or the reverse) raises TypeError."""
        return cls(**vars(namespace))


def _looks_secret(name: str) -> bool:
    # By whole words: api_key and auth_token are secrets, feedback_max_tokens is not.
    return bool(SECRET_WORDS & set(name.lower().split("_")))


def secret_values() -> list[str]:
    """Values of secret-looking environment variables (OPENAI_API_KEY, VLLM_API_KEY, COMET_API_KEY, ...)."""
    return [v for k, v in os.environ.items() if _looks_secret(k) and len(v) >= 8]


def unused_flags(module: str | None) -> tuple[str, ...]:
    """Flags a module never reads, left out of its config.yaml so it records only what shaped the run."""
    return () if module == "train_homo_fed" else ("homo_split_num",)


def resolved_config(args: RunConfig) -> dict[str, Any]:
    """The flags as saved to config.yaml, in the parser's order: secret-named flags, and any value holding
    a key from the environment (a key pasted into --run_name, say), are redacted."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(args).items()
              if k not in unused_flags(args.module)}
    secrets = secret_values()
    for key, value in config.items():
        if _looks_secret(key) or any(secret in str(value) for secret in secrets):
            config[key] = REDACTED
    return config
