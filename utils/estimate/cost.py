"""The bill of a run before it starts: calls and tokens (utils.estimate.requests), then time and money.

Token counts come from the engine's tokenizer where it is reachable without a server
(utils.estimate.tokens). Completion tokens are first the token limits (an upper bound); once this
engine has finished runs under --output_dir (each run keeps its estimate.json beside results.json),
the measured tokens per call of those runs scale the estimate, and failing that the averages of the
engine's replies in the response cache. Time is calls / --max_concurrency x seconds per call, measured
the same way (or --estimate_latency). Money: engines with a price (utils.estimate.prices or --price_in/--price_out).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textgrad.errors import EngineError
from textgrad.serving.backends import canonical_engine_name, split_engine_name
from textgrad.serving.cache import ResponseCache
from textgrad.serving.http import clean_url
from textgrad.serving.runtime import current_runtime
from textgrad.serving.transport import chat_body
from utils.config import UsageError
from utils.federated.experiment import Experiment
from utils.federated.sampling import Sampling, role_sampling
from utils.files import write_json_atomic
from utils.reporting.prompt_stats import uid_enabled
from utils.run_config import RunConfig

from .prices import Price, engine_price, parse_price_overrides
from .requests import CHAT_KINDS, JUDGE_MAX_TOKENS, LOGPROB, CallPlan, PlanSpec, Tally, plan_calls
from .tokens import token_counter
from .walk import extrapolate, plan_walk

ESTIMATE_FILE = "estimate.json"
FORMAT_VERSION = 1
# Enough cached replies for an average; a cache of a long grid holds far more.
MAX_CACHE_ENTRIES = 5000
MAX_CALIBRATION_RUNS = 50
ASSUMPTIONS = ("every optimizer reply gives a usable prompt and every new prompt is kept (each step "
               "re-scores its batch, each client returns a new prompt, each merge is needed); the best "
               "prompt is the last one; no request is cut or skipped for the context window")


@dataclass(frozen=True)
class EngineFacts:
    """What can be known about an engine without contacting it."""

    name: str
    kind: str               # local | ollama | vllm | sglang | openai
    model: str | None       # the model id its requests carry (cache keys); None when only the server knows
    model_path: str | None  # the GGUF file of the local engine
    logprobs: bool          # utils.reporting.uid asks it for log-probabilities
    openai_routed: bool     # served by OpenAI itself, so its list price applies
    endpoint: str | None = None  # the server as the response cache keys it (ChatOpenAI.cache_endpoint)


def engine_facts(name: str) -> EngineFacts:
    if name == "local":
        from textgrad.serving.llama_process import find_packaged_model

        external = bool(os.environ.get("LOCAL_BASE_URL"))
        try:
            path: str | None = find_packaged_model()
        except EngineError:
            if not external:  # the embedded server needs the model: a normal start fails the same way
                raise
            path = None
        embedded = not external and path is not None
        return EngineFacts(name, "local", Path(path).stem if embedded else None, path,
                           logprobs=True, openai_routed=False, endpoint=f"embedded:{path}" if embedded else None)
    backend, model = split_engine_name(canonical_engine_name(name))
    url = os.environ.get(backend.url_env) or backend.default_url
    return EngineFacts(name, backend.kind, (model or "").strip(), None, logprobs=backend.prompt_logprobs is not None,
                       openai_routed=backend.kind == "openai" and not os.environ.get("OPENAI_BASE_URL"),
                       endpoint=clean_url(url) if url else None)


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Measured tokens per call relative to the token-limit estimate, and seconds per call, of one engine."""

    prompt_factor: float = 1.0
    completion_factor: float = 1.0
    source: str = "the token limits (an upper bound: no finished run or cached reply of this engine yet)"
    seconds_per_call: float | None = None
    latency_source: str | None = None


@dataclass
class _Sums:
    calls: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.calls += float(record.get("calls") or 0)
        self.prompt_tokens += float(record.get("prompt_tokens") or 0)
        self.completion_tokens += float(record.get("completion_tokens") or 0)

    def per_call(self, name: str) -> float:
        return getattr(self, name) / self.calls if self.calls else 0.0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finished_runs(output_dir: Path) -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(run folder, its estimate, its results) of the newest finished runs that recorded an estimate."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.rglob(ESTIMATE_FILE):
        results = path.parent / "results.json"
        if results.is_file():
            found.append((results.stat().st_mtime, path.parent))
    runs = []
    for _, run_dir in sorted(found, reverse=True)[:MAX_CALIBRATION_RUNS]:
        estimate, results = _read_json(run_dir / ESTIMATE_FILE), _read_json(run_dir / "results.json")
        if isinstance(estimate, dict) and isinstance(results, dict) and estimate.get("version") == FORMAT_VERSION:
            runs.append((run_dir, estimate, results))
    return runs


def _measured(engine: str, estimate: dict[str, Any], results: dict[str, Any]) -> dict[str, Any] | None:
    """This engine's measured calls and tokens in a finished run."""
    engines = estimate.get("engines") or {}
    llm = results.get("llm") or {}
    if engine not in engines:
        return None
    if len(engines) == 1:  # test and evaluation engine are one: the run's totals are its own
        return llm
    return (llm.get("by_engine_this_process") or {}).get(engine)


def calibrate_from_runs(engine: str, output_dir: Path) -> Calibration | None:
    actual, raw, busy_seconds, run_calls, runs = _Sums(), _Sums(), 0.0, 0.0, 0
    for _, estimate, results in _finished_runs(output_dir):
        measured = _measured(engine, estimate, results)
        raw_totals = (estimate.get("raw_totals") or {}).get(engine)
        if not measured or not raw_totals or not measured.get("calls") or not raw_totals.get("calls"):
            continue  # answered from the cache: nothing was measured
        actual.add(measured)
        raw.add(raw_totals)
        runs += 1
        calls = float((results.get("llm") or {}).get("calls") or 0)
        if results.get("wall_seconds") and calls:
            busy_seconds += float(results["wall_seconds"]) * int(estimate.get("max_concurrency") or 1)
            run_calls += calls
    if not runs:
        return None
    where = f"{runs} finished run{'s' * (runs > 1)} of {engine} under {output_dir}"
    latency = busy_seconds / run_calls if run_calls else None
    return Calibration(
        prompt_factor=_ratio(actual.per_call("prompt_tokens"), raw.per_call("prompt_tokens")),
        completion_factor=_ratio(actual.per_call("completion_tokens"), raw.per_call("completion_tokens")),
        source=f"measured tokens per call of {where}",
        seconds_per_call=latency, latency_source=f"measured in {where}" if latency else None)


def calibrate_from_cache(facts: EngineFacts, cache_dir: Path, raw: Tally,
                         written_before: float | None = None) -> Calibration | None:
    """Average completion tokens of this model's replies in the response cache (every kind of call pooled),
    of the entries written before `written_before` (a time.time()) if given."""
    if facts.model is None or not raw.calls or not cache_dir.is_dir():
        return None
    sums, entries = _Sums(), 0
    for path in cache_dir.glob("*/*.json"):
        if entries >= MAX_CACHE_ENTRIES:
            break
        if written_before is not None and _written_since(path, written_before):
            continue
        entry = _read_json(path)
        if not isinstance(entry, dict) or entry.get("model") != facts.model or "text" not in entry:
            continue
        sums.add({"calls": 1, **{k: entry.get(k) for k in ("prompt_tokens", "completion_tokens")}})
        entries += 1
    if not entries:
        return None
    return Calibration(completion_factor=_ratio(sums.per_call("completion_tokens"), raw.completion_tokens / raw.calls),
                       source=f"the average of {entries} cached replies of {facts.model} in {cache_dir} "
                              "(all kinds of call pooled)")


def _ratio(measured: float, estimated: float) -> float:
    return measured / estimated if estimated > 0 else 1.0


# ---------------------------------------------------------------- the estimate


@dataclass
class EngineEstimate:
    kind: str
    tokenizer: str
    completion_source: str
    prompt_factor: float
    completion_factor: float
    seconds_per_call: float | None
    latency_source: str | None
    price: dict[str, Any] | None
    usd: float | None = None


@dataclass
class Estimate:
    module: str
    tasks: list[str]
    aggregate_method: str | None
    rounds: int
    first_round: int
    clients: int
    clients_per_round: int
    max_concurrency: int
    engines: dict[str, EngineEstimate]
    phases: list[dict[str, Any]]       # {"phase", "engine", "calls", "cached", "prompt_tokens", "completion_tokens"}
    uid: list[dict[str, Any]]          # the same for log-probability requests (not chat calls)
    totals: dict[str, dict[str, Any]]  # per engine, calibrated
    raw_totals: dict[str, dict[str, Any]]  # per engine, at the token limits: what later runs calibrate against
    total: dict[str, Any]
    conditional: list[dict[str, Any]]
    seconds: float | None
    usd: float | None
    cache_note: str
    assumptions: str = ASSUMPTIONS
    version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _limits(exp: Experiment) -> dict[str, float]:
    s = exp.settings
    return {"answer": s.answer_max_tokens, "feedback": s.feedback_max_tokens, "optimizer": s.optimizer_max_tokens,
            "merge": exp.merge_max_tokens, "judge": JUDGE_MAX_TOKENS}


def _cache_probe(facts: dict[str, EngineFacts], cache: ResponseCache | None, answer: Sampling,
                 written_before: float | None
                 ) -> Callable[[str, list[dict[str, str]], int], bool]:
    """Whether the cache holds the reply to an answer request (the only requests known before the run)."""
    def known(engine: str, messages: list[dict[str, str]], max_tokens: int) -> bool:
        model, endpoint = facts[engine].model, facts[engine].endpoint
        if cache is None or model is None or endpoint is None:
            return False
        body = chat_body(model, messages, temperature=answer.temperature, max_tokens=max_tokens, top_p=answer.top_p)
        key = ResponseCache.request_key(body, endpoint=endpoint)
        hit = cache.get(key)
        if written_before is not None and hit is not None and _written_since(cache.path(key), written_before):
            return False
        return hit is not None and isinstance(hit.get("text"), str)

    return known


def _written_since(path: Path, moment: float) -> bool:
    """Whether the file was written at or after `moment` (a time.time()), or is gone."""
    try:
        return path.stat().st_mtime >= moment
    except OSError:
        return True


def _resume_point(run_dir: Path, resume: bool) -> tuple[int | None, str | None]:
    """(the round of the checkpoint, the global prompt it continues from) of a resumed run (0: the
    zero-shot one); (None, None) when there is none: the run starts from the beginning."""
    state = _read_json(run_dir / "checkpoint.json") if resume else None
    if not isinstance(state, dict) or "round" not in state:
        return None, None
    return int(state["round"]), state.get("global_prompt")


def _record(tally: Tally, prompt_factor: float = 1.0, completion_factor: float = 1.0) -> dict[str, Any]:
    return {"calls": tally.calls, "cached": tally.cached, "prompt_tokens": round(tally.prompt_tokens * prompt_factor),
            "completion_tokens": round(tally.completion_tokens * completion_factor)}


def _rows(plan: CallPlan, kinds: tuple[str, ...], factors: dict[str, Calibration]) -> list[dict[str, Any]]:
    rows = []
    for phase, engines in plan.by_phase(kinds).items():
        for engine, tally in engines.items():
            cal = factors.get(engine, Calibration())
            rows.append({"phase": phase, "engine": engine, **_record(tally, cal.prompt_factor, cal.completion_factor)})
    return rows


def estimate_run(args: RunConfig, exp: Experiment, run_dir: Path, cache_before: float | None = None) -> Estimate:
    """The estimate of the run these (validated) flags and this experiment describe. cache_before: the
    response cache as it was then (a time.time()), for a run that estimates itself after it started."""
    names = list(dict.fromkeys([args.test_engine, args.evaluation_engine]))
    facts = {name: engine_facts(name) for name in names}
    prices = _prices(args, facts)
    test = facts[args.test_engine]
    counter = token_counter(test.name, test.kind, test.model_path)
    cache_dir = (Path(args.cache_dir).expanduser().resolve() if args.cache_dir
                 else Path(current_runtime().settings.cache_directory()))
    done, first_prompt = _resume_point(run_dir, args.resume)
    # The plan the round loop will walk (from its checkpoint on when resuming), counted request by request, or
    # for a large run its first rounds and steps, and the rest scaled from them.
    walk = plan_walk(exp, args.judge == "llm", done)
    plan = extrapolate(plan_calls(PlanSpec(
        experiment=walk.experiment, plan=walk.plan, test_engine=args.test_engine,
        evaluation_engine=args.evaluation_engine, use_cache=not args.no_cache,
        logprobs=test.logprobs and uid_enabled(), count_tokens=counter.count, completion=_limits(exp),
        known_reply=_cache_probe(facts, None if args.no_cache else ResponseCache(cache_dir),
                                 role_sampling(args.temperature, args.top_p)["answer"], cache_before),
        first_prompt=first_prompt)), walk)
    raw = {name: plan.totals().get(name, Tally()) for name in names}
    calibrations = {name: _calibration(facts[name], Path(args.output_dir), cache_dir, raw[name], args.estimate_latency,
                                       cache_before) for name in names}
    totals = {name: _record(raw[name], calibrations[name].prompt_factor, calibrations[name].completion_factor)
              for name in names}
    # One tokenizer measures every request: the prompts in them are the test engine's.
    tokenizer = counter.source if len(names) == 1 else f"the test engine's tokenizer: {counter.source}"
    engines = {name: _engine_estimate(facts[name], tokenizer, calibrations[name], prices[name], totals[name])
               for name in names}
    return Estimate(
        module=exp.module, tasks=[t.name for t in exp.tasks], aggregate_method=exp.aggregate_method,
        rounds=exp.rounds, first_round=(done or 0) + 1, clients=len(exp.clients), clients_per_round=exp.clients_per_round,
        max_concurrency=args.max_concurrency, engines=engines,
        phases=_rows(plan, CHAT_KINDS, calibrations), uid=_rows(plan, (LOGPROB,), {}),
        totals=totals, raw_totals={name: _record(t) for name, t in raw.items()}, total=_sum_records(totals.values()),
        conditional=[{"what": what, "calls": calls, "tokens": round(tokens)} for what, calls, tokens in plan.conditional],
        seconds=_seconds(totals, engines, args.max_concurrency), usd=_usd(engines),
        cache_note=_cache_note(args.no_cache, cache_dir, plan), notes=[walk.note()] if walk.scaled else [])


def _prices(args: RunConfig, facts: dict[str, EngineFacts]) -> dict[str, Price | None]:
    try:
        price_in = parse_price_overrides(args.price_in, "--price_in")
        price_out = parse_price_overrides(args.price_out, "--price_out")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {name: engine_price(name, f.openai_routed, price_in, price_out) for name, f in facts.items()}


def _calibration(facts: EngineFacts, output_dir: Path, cache_dir: Path, raw: Tally,
                 latency: float | None, cache_before: float | None = None) -> Calibration:
    found = (calibrate_from_runs(facts.name, output_dir) or calibrate_from_cache(facts, cache_dir, raw, cache_before)
             or Calibration())
    if latency is not None:
        return Calibration(found.prompt_factor, found.completion_factor, found.source, latency, "--estimate_latency")
    return found


def _engine_estimate(facts: EngineFacts, tokenizer: str, cal: Calibration, price: Price | None,
                     total: dict[str, Any]) -> EngineEstimate:
    return EngineEstimate(kind=facts.kind, tokenizer=tokenizer, completion_source=cal.source,
                          prompt_factor=round(cal.prompt_factor, 4), completion_factor=round(cal.completion_factor, 4),
                          seconds_per_call=cal.seconds_per_call, latency_source=cal.latency_source,
                          price=None if price is None else asdict(price),
                          usd=None if price is None else price.cost(total["prompt_tokens"], total["completion_tokens"]))


def _sum_records(records: Any) -> dict[str, Any]:
    total = {"calls": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for record in records:
        for key in total:
            total[key] += record[key]
    return total


def _seconds(totals: dict[str, dict[str, Any]], engines: dict[str, EngineEstimate], concurrency: int) -> float | None:
    seconds = 0.0
    for name, record in totals.items():
        latency = engines[name].seconds_per_call
        if record["calls"] and latency is None:
            return None
        seconds += record["calls"] / concurrency * (latency or 0.0)
    return seconds


def _usd(engines: dict[str, EngineEstimate]) -> float | None:
    priced = [e.usd for e in engines.values() if e.usd is not None]
    return sum(priced) if priced else None


def _cache_note(no_cache: bool, cache_dir: Path, plan: CallPlan) -> str:
    if no_cache:
        return "--no_cache: every request is sent, repeats too (the evaluator's memo still spares repeated evaluations)"
    free = sum(line.tally.cached for line in plan.lines if line.kind in CHAT_KINDS)
    return (f"{free} requests answered from the response cache ({cache_dir}) are free: this run's own repeats, and "
            "answers with the starting prompt already cached (later requests depend on replies not known yet)")


def write_estimate(estimate: Estimate, path: Path) -> None:
    write_json_atomic(path, estimate.to_record())
