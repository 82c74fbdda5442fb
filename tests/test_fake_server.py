"""The bench server: routes, deterministic replies in the pipeline's formats, slots, faults, context limits."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.fake_server import CONTEXT_ERROR_MESSAGE, FakeServer
from bench.fake_server.replies import merged_prompt, solve
from textgrad.optimizer import extract_improved_value
from textgrad.prompts import FEEDBACK_SYSTEM, OPTIMIZER_SYSTEM, OPTIMIZER_TEMPLATE
from textgrad.serving.runtime import Runtime
from utils.federated.aggregation import MERGE_SYSTEM, merge_request
from utils.tasks.evaluation import JUDGE_SYSTEM, JUDGE_TEMPLATE
from utils.tasks.registry import resolve_task
from utils.tasks.scoring import score_response
from utils.tasks.synthetic import generate_examples

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTING = resolve_task("synthetic_object_counting")
LAST_SENTENCE = "Read the question closely and reason step by step, checking each intermediate result before moving on."


def post(url: str, payload: dict[str, Any], timeout: float = 10.0) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def chat(server: FakeServer, user: str, system: str | None = None, max_tokens: int = 64) -> tuple[int, dict, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return post(f"{server.base_url}/chat/completions",
                {"model": "fake-model", "messages": messages, "max_tokens": max_tokens})


def content(body: dict[str, Any]) -> str:
    return body["choices"][0]["message"]["content"]


@pytest.fixture
def server() -> Any:
    with FakeServer() as s:
        yield s


def test_lists_its_model_and_context_size(server: FakeServer) -> None:
    assert [m["id"] for m in get(f"{server.base_url}/models")["data"]] == ["fake-model"]
    assert get(server.base_url.removesuffix("/v1") + "/props")["default_generation_settings"]["n_ctx"] == 8192
    with FakeServer(max_context=512) as small:
        assert get(small.base_url.removesuffix("/v1") + "/props")["default_generation_settings"]["n_ctx"] == 512


def test_unknown_model_is_404(server: FakeServer) -> None:
    status, body, _ = post(f"{server.base_url}/chat/completions",
                           {"model": "other", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404 and "other" in body["error"]["message"]


def test_answers_are_deterministic_scoreable_and_sometimes_right(server: FakeServer) -> None:
    examples = generate_examples("synthetic_object_counting", 60, seed=3)
    prompt = COUNTING.starting_prompt()
    replies = [content(chat(server, ex.question, prompt)[1]) for ex in examples]
    assert replies == [content(chat(server, ex.question, prompt)[1]) for ex in examples]
    assert all(r.splitlines()[-1].startswith("Answer: ") for r in replies)
    accuracy = statistics.mean(score_response(COUNTING, r, ex.target) for r, ex in zip(replies, examples, strict=True))
    assert 0.2 < accuracy < 0.6
    # Another prompt gets other answers right: accuracy depends on the prompt.
    other = [content(chat(server, ex.question, prompt + " Be brief.")[1]) for ex in examples]
    assert other != replies


def test_solver_knows_the_true_answers_of_synthetic_tasks() -> None:
    for name in ("synthetic_object_counting", "synthetic_word_sorting", "synthetic_multistep_arithmetic"):
        assert all(solve(ex.question) == ex.target for ex in generate_examples(name, 40, seed=5))


def test_feedback_and_judge_replies(server: FakeServer) -> None:
    status, body, _ = chat(server, "A language model worked with this ...", FEEDBACK_SYSTEM)
    assert status == 200 and "prompt" in content(body) and "Answer:" not in content(body)
    same = JUDGE_TEMPLATE.format(target="12", response="Answer: 12", reply_format="")
    assert content(chat(server, same, JUDGE_SYSTEM)[1]) == "Yes"
    verdicts = {content(chat(server, JUDGE_TEMPLATE.format(target="12", response=f"Answer: {n}", reply_format=""), JUDGE_SYSTEM)[1])
                for n in range(30, 60)}
    assert verdicts <= {"Yes", "No"} and "No" in verdicts


def test_optimizer_inserts_a_sentence_and_keeps_the_last_sentence_last(server: FakeServer) -> None:
    current = COUNTING.starting_prompt()
    request = OPTIMIZER_TEMPLATE.format(role="system prompt", value=current, feedback="Count carefully.",
                                        constraints="", reply_format="")
    new = extract_improved_value(content(chat(server, request, OPTIMIZER_SYSTEM)[1]))
    assert new is not None and len(new) > len(current)
    assert new.splitlines()[-1] == LAST_SENTENCE


def test_merge_keeps_every_distinct_sentence_once_and_the_last_sentence_last(server: FakeServer) -> None:
    base = COUNTING.starting_prompt()
    prompts = [base, base.replace(" Read", "\nAlways list items first.\nRead"),
               base.replace(" Read", "\nIgnore distractors.\nRead")]
    status, body, _ = chat(server, merge_request(prompts, [COUNTING], uid=True), MERGE_SYSTEM)
    text = content(body)
    assert status == 200 and text.startswith("<MERGED_PROMPT>") and text.endswith("</MERGED_PROMPT>")
    merged = text.removeprefix("<MERGED_PROMPT>").removesuffix("</MERGED_PROMPT>").strip()
    assert merged == merged_prompt(prompts)
    lines = merged.splitlines()
    assert lines[-1] == LAST_SENTENCE
    assert "Always list items first." in lines and "Ignore distractors." in lines


def test_usage_counts_tokens_as_a_quarter_of_the_characters(server: FakeServer) -> None:
    _, body, _ = chat(server, "x" * 40, "y" * 21)
    assert body["usage"]["prompt_tokens"] == 16  # ceil(61 / 4)
    assert body["usage"]["completion_tokens"] == -(-len(content(body)) // 4)


def test_slots_bound_processing_and_peak_in_flight_counts_the_queue() -> None:
    with FakeServer(latency=0.2, slots=2) as server:
        threads = [threading.Thread(target=chat, args=(server, f"q{i}")) for i in range(6)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        stats = server.stats
    assert stats["peak_processing"] == 2
    assert stats["peak_in_flight"] > 2  # requests queued for a slot are open requests too
    assert stats["requests"] == stats["completed"] == 6 and stats["in_flight"] == 0
    assert elapsed >= 0.55  # three waves of 0.2 s
    assert len(stats["prompts_seen"]) == 6


def test_injected_http_faults_are_seeded() -> None:
    def run() -> list[int]:
        with FakeServer(seed=7, rate_500=0.3, rate_429=0.3) as server:
            results = [chat(server, f"q{i}") for i in range(40)]
            assert server.stats["faults_by_kind"]["http_500"] == sum(s == 500 for s, _, _ in results)
            assert all(h["Retry-After"] == "0" for s, _, h in results if s == 429)
            return [s for s, _, _ in results]

    statuses = run()
    assert statuses == run()
    assert {200, 429, 500} <= set(statuses)


def test_malformed_replies_have_no_usable_format(server: FakeServer) -> None:
    request = OPTIMIZER_TEMPLATE.format(role="r", value=COUNTING.starting_prompt(), feedback="f", constraints="",
                                        reply_format="")
    with FakeServer(rate_malformed=1.0) as bad:
        replies = [content(chat(bad, request + str(i), OPTIMIZER_SYSTEM)[1]) for i in range(12)]
        answers = [content(chat(bad, f"I have a cat. How many animals do I have? {i}")[1]) for i in range(6)]
        assert bad.stats["faults_by_kind"]["malformed"] == 18
    assert all(extract_improved_value(r) is None for r in replies)
    assert all("Answer:" not in a for a in answers)
    assert "" in replies


def test_timeout_fault_hangs_then_closes_without_reply() -> None:
    with FakeServer(rate_timeout=1.0, timeout_sleep=5.0) as server:
        started = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            post(f"{server.base_url}/chat/completions",
                 {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}, timeout=0.5)
        assert time.monotonic() - started < 2
        assert server.stats["faults_by_kind"]["timeout"] == 1
    # stop() wakes the hung handler instead of waiting out timeout_sleep
    assert time.monotonic() - started < 4


def test_over_long_requests_get_llama_cpp_context_error() -> None:
    with FakeServer(max_context=100) as server:
        assert chat(server, "x" * 200, max_tokens=40)[0] == 200  # 50 + 40 <= 100
        status, body, _ = chat(server, "x" * 300, max_tokens=40)
        assert status == 400
        assert body["error"] == {"code": 400, "message": CONTEXT_ERROR_MESSAGE, "type": "exceed_context_size_error",
                                 "n_prompt_tokens": 75, "n_ctx": 100}
        assert server.stats["context_rejections"] == 1


def test_prompt_logprobs_tell_repetitive_from_lumpy_text(server: FakeServer) -> None:
    def logprobs(text: str) -> list[float]:
        status, body, _ = post(f"{server.base_url}/completions", {"model": "fake-model", "prompt": text,
                                                                 "echo": True, "logprobs": 0, "max_tokens": 0})
        assert status == 200
        lp = body["choices"][0]["logprobs"]
        assert "".join(lp["tokens"]) == text and lp["token_logprobs"][0] is None
        return lp["token_logprobs"][1:]

    repetitive = logprobs("count it. " * 20)
    lumpy = logprobs("Zebras quietly juggle forty-two violet umbrellas near Oslo's harbour at dawn.")
    assert statistics.mean(repetitive) > statistics.mean(lumpy)
    assert logprobs("same text") == logprobs("same text")
    with FakeServer(logprobs=False) as plain:
        assert post(f"{plain.base_url}/completions", {"model": "fake-model", "prompt": "hi", "echo": True,
                                                      "logprobs": 0, "max_tokens": 0})[0] == 404


def test_reset_stats_and_stats_route(server: FakeServer) -> None:
    chat(server, "hi")
    root = server.base_url.removesuffix("/v1")
    assert get(f"{root}/stats")["requests"] == 1
    post(f"{root}/stats/reset", {})
    assert server.stats["requests"] == 0 and server.stats["prompts_seen"] == []


def test_engine_talks_to_it(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from textgrad.engine import get_engine

    monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
    engine = get_engine("vllm-fake-model")
    assert engine.generate("I have two cats. How many animals do I have?",
                           system_prompt="p").splitlines()[-1].startswith("Answer:")
    assert engine.stats.as_dict()["calls"] == 1


def test_command_line_prints_its_url_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "bench.fake_server", "--port", "0",
                                "--latency", "0"], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert get(f"{url}/models")["data"][0]["id"] == "fake-model"
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---------------------------------------------------------------- structured output, per backend flavour

SCHEMA = {"type": "object", "properties": {"improved_variable": {"type": "string"}},
          "required": ["improved_variable"], "additionalProperties": False}
JSON_OBJECT = {"type": "json_object", "schema": SCHEMA}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "improved_variable", "schema": SCHEMA}}
OPTIMIZER_REQUEST = OPTIMIZER_TEMPLATE.format(role="system prompt", value=COUNTING.starting_prompt(),
                                              feedback="Count carefully.", constraints="", reply_format="")


def structured_chat(server: FakeServer, shape: Any) -> tuple[int, dict, Any]:
    return post(f"{server.base_url}/chat/completions", {
        "model": "fake-model", "max_tokens": 256, "response_format": shape,
        "messages": [{"role": "system", "content": OPTIMIZER_SYSTEM}, {"role": "user", "content": OPTIMIZER_REQUEST}]})


@pytest.mark.parametrize(("flavour", "right", "wrong"), [
    ("llama-cpp-python", JSON_OBJECT, JSON_SCHEMA), ("vllm", JSON_SCHEMA, JSON_OBJECT),
    ("sglang", JSON_SCHEMA, JSON_OBJECT), ("openai", JSON_SCHEMA, JSON_OBJECT), ("ollama", JSON_SCHEMA, JSON_OBJECT)])
def test_each_flavour_accepts_its_own_shape_only_and_answers_it_with_json(flavour: str, right: dict,
                                                                          wrong: dict) -> None:
    with FakeServer(flavour=flavour) as server:
        status, body, _ = structured_chat(server, right)
        assert status == 200
        reply = json.loads(content(body))
        assert list(reply) == ["improved_variable"] and reply["improved_variable"].startswith("You are a careful")
        status, body, _ = structured_chat(server, wrong)
        assert status == 400 and "response_format" in body["error"]["message"]
        assert server.stats["structured_rejections"] == 1


def test_schemas_beyond_one_plain_string_are_refused() -> None:
    long_limit = {**SCHEMA, "properties": {"improved_variable": {"type": "string", "maxLength": 1200}}}
    two = {**SCHEMA, "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}
    with FakeServer(flavour="llama-cpp-python") as server:
        for schema in (long_limit, two, "not a schema"):
            assert structured_chat(server, {"type": "json_object", "schema": schema})[0] == 400


def test_a_server_without_structured_output_refuses_the_field_and_still_answers_tags() -> None:
    with FakeServer(flavour="vllm", structured=False) as server:
        status, body, _ = structured_chat(server, JSON_SCHEMA)
        assert status == 400 and "response_format" in body["error"]["message"]
        status, body, _ = chat(server, OPTIMIZER_REQUEST, OPTIMIZER_SYSTEM, max_tokens=256)
        assert status == 200 and extract_improved_value(content(body)) is not None


def test_replies_longer_than_max_tokens_are_cut_when_asked() -> None:
    with FakeServer(cut_at_max_tokens=True) as server:
        _, body, _ = chat(server, OPTIMIZER_REQUEST, OPTIMIZER_SYSTEM, max_tokens=10)
        assert body["choices"][0]["finish_reason"] == "length" and len(content(body)) == 40
        _, body, _ = chat(server, OPTIMIZER_REQUEST, OPTIMIZER_SYSTEM, max_tokens=500)
        assert body["choices"][0]["finish_reason"] == "stop"


FLAVOUR_ENGINES = [  # (bench server flavour, engine name, the variable that points the engine at it)
    ("llama-cpp-python", "local", "LOCAL_BASE_URL"),
    ("vllm", "vllm-fake-model", "VLLM_BASE_URL"),
    ("sglang", "sglang-fake-model", "SGLANG_BASE_URL"),
    ("ollama", "ollama-fake-model", "OLLAMA_BASE_URL"),
    ("openai", "fake-model", "OPENAI_BASE_URL"),
]


def engine_on(server: FakeServer, name: str, env: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    from textgrad.engine import get_engine

    monkeypatch.setenv(env, server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return get_engine(name)


def one_tgd_step(engine: Any, text: str = COUNTING.starting_prompt()) -> tuple[Any, Any]:
    import textgrad as tg

    variable = tg.Variable(text, "system prompt")
    variable.gradients.append(tg.Variable("Count carefully.", "feedback", requires_grad=False))
    optimizer = tg.TGD([variable], engine=engine)
    optimizer.step()
    return variable, optimizer


@pytest.mark.parametrize(("flavour", "name", "env"), FLAVOUR_ENGINES)
def test_optimizer_merge_and_judge_use_each_backends_structured_output(flavour: str, name: str, env: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.federated.aggregation import aggregate_prompts
    from utils.tasks.evaluation import judge_answer

    with FakeServer(flavour=flavour) as server:
        engine = engine_on(server, name, env, monkeypatch)
        variable, optimizer = one_tgd_step(engine)
        assert optimizer.updated == [True] and optimizer.failures == [None]
        assert set(json.loads(optimizer.last_replies[0])) == {"improved_text"}  # it came back as JSON
        assert variable.value.startswith("You are a careful problem solver.\n")
        merged = aggregate_prompts(["Count every item. Add them up.", "Count every item. Check the sum."],
                                   "summarization", [COUNTING], engine)
        assert merged.failure is None and merged.prompt == "Count every item.\nAdd them up.\nCheck the sum."
        assert judge_answer(engine, "Answer: 12", "12") == 1
        shape = "json_object" if flavour == "llama-cpp-python" else "json_schema"
        assert server.stats["response_formats"] == {shape: 3}
        assert server.stats["structured_rejections"] == 0


def test_a_server_that_refuses_structured_output_switches_the_engine_to_tags_once(
        monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    with FakeServer(flavour="vllm", structured=False) as server:
        engine = engine_on(server, "vllm-fake-model", "VLLM_BASE_URL", monkeypatch)
        for text in ("First prompt. Be careful.", "Second prompt. Be quick."):
            variable, optimizer = one_tgd_step(engine, text)
            assert optimizer.updated == [True] and "<IMPROVED_VARIABLE>" in optimizer.last_replies[0]
        assert server.stats["structured_rejections"] == 1  # asked once, then tags for the rest of the run
        assert server.stats["response_formats"] == {"json_schema": 1, "none": 2}
        assert list(runtime.reply_formats.fallbacks()) == ["vllm-fake-model"]
        assert "response_format" in runtime.reply_formats.fallbacks()["vllm-fake-model"]


def test_structured_output_on_makes_a_refusal_an_error_and_off_never_asks(monkeypatch: pytest.MonkeyPatch,
                                                                         runtime: Runtime) -> None:
    from textgrad.errors import EngineError

    runtime.reply_formats.configure("on")
    with FakeServer(flavour="vllm", structured=False) as server:
        engine = engine_on(server, "vllm-fake-model", "VLLM_BASE_URL", monkeypatch)
        with pytest.raises(EngineError, match="--structured_output"):
            one_tgd_step(engine)
    runtime.reply_formats.configure("off")
    with FakeServer(flavour="vllm") as server:
        engine = engine_on(server, "sglang-fake-model", "SGLANG_BASE_URL", monkeypatch)
        _, optimizer = one_tgd_step(engine)
        assert optimizer.updated == [True] and server.stats["response_formats"] == {"none": 1}


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_a_merge_cut_at_its_token_limit_is_truncated_not_no_tags(mode: str, monkeypatch: pytest.MonkeyPatch,
                                                               runtime: Runtime) -> None:
    from utils.federated.aggregation import aggregate_prompts

    runtime.reply_formats.configure(mode)
    # Four different prompts merge into one four times as long as any: more than the reply's room.
    prompts = [f"Rule {i}: look at every item of kind {i} twice and write down its count first." for i in range(4)]
    # A budget of 16 tokens leaves the reply room for 52; this server's merges ignore the budget they are told.
    with FakeServer(flavour="vllm", cut_at_max_tokens=True, merge_budget="ignore") as server:
        engine = engine_on(server, "vllm-fake-model", "VLLM_BASE_URL", monkeypatch)
        merged = aggregate_prompts(prompts, "summarization", [COUNTING], engine, max_tokens=16, max_prompt_tokens=16)
    assert merged.failure == "truncated" and merged.format_failure
    assert merged.tree.retries == 1 and merged.tree.levels == [2]  # asked once more for a shorter merge, in vain
    assert merged.prompt == "\n\n".join(prompts)  # concatenated instead
