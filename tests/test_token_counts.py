"""One token counter (issue 11 item 4): prompt lengths are the test engine's own token counts where its
tokenizer is reachable, and flagged as estimates where it is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from main import main
from tests.scripted_engine import ScriptedEngine
from textgrad.engine import get_engine
from textgrad.serving.llama_process import find_packaged_model
from textgrad.serving.runtime import Runtime, current_runtime
from textgrad.serving.tokenizers import ServerTokenizer, TokenCount
from utils.reporting.complexity import complexity
from utils.reporting.prompt_stats import measure_prompt, token_axis_label
from utils.tasks.registry import resolve_task

SENTENCE = "Read the question closely, list each item with its count, then add them up."
# SmolLM2-135M-Instruct's tokens of SENTENCE, read once from its tokenizer (17 pieces): Read| the| question|
# closely|,| list| each| item| with| its| count|,| then| add| them| up|.
SMOLLM2_TOKENS = 17
# textgrad.serving.tokenizers.estimate_tokens(SENTENCE): the conservative estimate (characters / 4 would say 19).
ESTIMATED_TOKENS = 32
# SmolLM2's tokens of synthetic_object_counting's starting prompt, read once from its tokenizer: You| are| a|
# careful| problem| solver|.| Read| the| question| closely| and| reason| step| by| step|,| checking| each|
# intermediate| result| before| moving| on|.  (136 characters: characters / 4 would record 34.) The trained
# text only: the answer-format line is appended when a question is served.
STARTING_PROMPT_TOKENS = 25


def test_the_embedded_models_vocabulary_counts_exactly(runtime: Runtime) -> None:
    tokenizer = runtime.vocabs.tokenizer(find_packaged_model())
    assert tokenizer is not None and tokenizer.count(SENTENCE) == SMOLLM2_TOKENS
    assert runtime.vocabs.tokenizer(str(Path(find_packaged_model()).with_suffix(".missing"))) is None


def test_an_engine_without_a_tokenizer_gets_a_flagged_estimate() -> None:
    expected = {"chars": len(SENTENCE), "tokens": ESTIMATED_TOKENS, "tokens_estimated": True, "uid": None,
                **complexity(SENTENCE)}  # and its entropy and compression ratio (tests/test_complexity.py)
    assert measure_prompt(SENTENCE, ScriptedEngine()) == expected
    assert measure_prompt(SENTENCE) == expected


@pytest.fixture
def openai_engine_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """An OpenAI engine whose server is down and whose tiktoken download fails at once, as offline."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-token-counts")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # no window report: the default
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))  # nothing cached
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # every download is refused
    monkeypatch.setenv("NO_PROXY", "")
    return get_engine


def test_openai_counts_fall_back_to_a_flagged_estimate_offline(openai_engine_offline: Any) -> None:
    engine = openai_engine_offline("gpt-4o")
    assert engine.token_count(SENTENCE) == TokenCount(ESTIMATED_TOKENS, exact=False)
    assert measure_prompt(SENTENCE, engine)["tokens_estimated"] is True


def test_a_model_tiktoken_does_not_know_is_estimated(openai_engine_offline: Any) -> None:
    engine = openai_engine_offline("my-proxied-llama")
    assert engine.token_count(SENTENCE) == TokenCount(ESTIMATED_TOKENS, exact=False)


def test_plot_and_report_label_say_estimated_only_when_counts_are(tmp_path: Path) -> None:
    assert token_axis_label([{"prompt_tokens_estimated": False}]) == "tokens"
    assert token_axis_label([{"prompt_tokens_estimated": False}, {"prompt_tokens_estimated": True}]) == \
        "tokens (estimated)"
    assert token_axis_label([{}]) == "tokens (estimated)"  # results.json from before the flag: characters / 4


def _tiny_local_run(tmp_path: Path) -> Path:
    argv = ["--module", "train_centralized", "--task", "synthetic_object_counting", "--split_sizes", "2,2,2",
            "--max_epochs", "1", "--max_steps", "1", "--batch_size", "1", "--max_tokens", "24",
            "--feedback_max_tokens", "32", "--optimizer_max_tokens", "64", "--seed", "3",
            "--test_engine", "local", "--evaluation_engine", "local", "--comet_mode", "disabled",
            "--output_dir", str(tmp_path), "--run_name", "run"]
    assert main(argv) == 0
    return tmp_path / "run"


def test_a_seeded_run_on_the_embedded_default_records_exact_token_counts(
        tmp_path: Path, local_engine_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_BASE_URL", raising=False)
    engine = get_engine("local")
    assert engine.token_count(SENTENCE) == TokenCount(SMOLLM2_TOKENS, exact=True)
    run = _tiny_local_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["prompt_tokens_estimated"] is False
    tokenizer = current_runtime().vocabs.tokenizer(find_packaged_model())
    assert tokenizer is not None
    for record in results["rounds"]:
        assert record["prompt_tokens_estimated"] is False
    final = results["rounds"][-1]
    assert final["aggregate_tokens"] == tokenizer.count(results["final_prompt"])
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    updates = [e for e in events if e["type"] in ("client_update", "aggregate")]
    assert updates and all(e["tokens_estimated"] is False for e in updates)
    # Round 0 of the length plots is the starting prompt, of known length (whether SmolLM2's edit in
    # this seeded run is kept or not, which structured replies now make possible).
    assert resolve_task("synthetic_object_counting").starting_prompt().startswith("You are a careful problem")
    assert results["starting_prompt_tokens"] == STARTING_PROMPT_TOKENS


def scripted_counts(statuses: list[int]) -> Any:
    """A tokenize route answering the statuses in order (200: the count of the text's words), then 200."""
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status = statuses.pop(0) if statuses else 200
        return status, {"count": len(body["content"].split())} if status == 200 else {"error": "no"}
    return answer


def test_a_busy_tokenize_route_estimates_that_count_and_is_asked_again(json_server: Any, runtime: Runtime) -> None:
    server = json_server({"/tokenize": scripted_counts([503, 200])})
    tokenizer = ServerTokenizer(runtime.http, server.base_url, "m", "key", ("/tokenize",))
    assert tokenizer.count("one two three") is None  # overloaded for a moment: this count is estimated ...
    assert tokenizer.count("one two three four") == 4  # ... and the route is not given up
    assert server.route_requests["/tokenize"] == 2


def test_a_server_without_a_tokenize_route_is_asked_once(json_server: Any, runtime: Runtime) -> None:
    server = json_server({"/tokenize": None, "/extras/tokenize/count": None})  # 404 on both
    tokenizer = ServerTokenizer(runtime.http, server.base_url, "m", "key", ("/tokenize", "/extras/tokenize/count"))
    assert tokenizer.count("one two") is None and tokenizer.count("three") is None
    assert server.route_requests == {"/tokenize": 1, "/extras/tokenize/count": 1}  # each once, then estimates


def test_a_llamacpp_server_given_by_url_is_counted_with_the_packaged_vocabulary(
        make_fake_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOCAL_BASE_URL serving the packaged model: counted in-process, never queued behind a generation
    (llama-cpp-python's server answers tokenize requests only between completions)."""
    server = make_fake_server(models=(Path(find_packaged_model()).stem,))
    monkeypatch.setenv("LOCAL_BASE_URL", server.base_url)
    engine = get_engine("local")
    assert engine.token_count(SENTENCE) == TokenCount(SMOLLM2_TOKENS, exact=True)
    assert engine.estimate_tokens(SENTENCE) == SMOLLM2_TOKENS  # in-process, so the cheap count is exact too
