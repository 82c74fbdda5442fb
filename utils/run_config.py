"""RunConfig: a run's settings, one typed field per main.py flag, built once from the parsed flags.

The parser (utils.config.build_parser) is the one source of flags, defaults and checks; this class only
gives what it produced a type and keeps it from changing. A derived config is a dataclasses.replace.
Fields stand in the parser's order, which is also the key order of a run's config.yaml.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


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
    max_tokens: int
    feedback_max_tokens: int
    optimizer_max_tokens: int
    merge_max_tokens: int
    structured_output: str
    max_context: int | None
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
