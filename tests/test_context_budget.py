"""Context windows: every request within budget, overflow replies handled, runs that never die of length.

Fast tests of the budget arithmetic, engines against the bench server (which answers HTTP 400 above
its window, as llama.cpp does), whole runs of BBH + GSM8K from ../shared/data in a small window, and
a prompt grown over rounds on the real embedded llama.cpp server.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import textgrad as tg
from bench.fake_server import CONTEXT_ERROR_MESSAGE, FakeServer
from bench.fake_server.replies import request_kind
from main import main
from textgrad.engine import get_engine
from textgrad.errors import ContextOverflowError
from textgrad.serving import budget
from textgrad.serving.llama_process import find_packaged_model
from textgrad.serving.runtime import Runtime, current_runtime
from textgrad.serving.stats import EngineStats
from textgrad.serving.tokenizers import estimate_tokens
from textgrad.serving.window import discover_window, is_overflow, message_overhead, overflow_sizes
from utils.federated.aggregation import aggregate_prompts
from utils.federated.client import Engines, LocalSettings, local_step
from utils.tasks.data import load_task_data
from utils.tasks.evaluation import evaluate_prompt
from utils.tasks.registry import resolve_task


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


def count_words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- counting and cutting


def test_estimate_is_never_below_the_real_tokenizer_on_the_shared_data(shared_data: Path, runtime: Runtime) -> None:
    tokenizer = runtime.vocabs.tokenizer(find_packaged_model())
    assert tokenizer is not None
    texts: list[str] = []
    for task in ("object_counting", "word_sorting", "multistep_arithmetic_two"):
        examples = json.loads((shared_data / "bbh" / f"{task}.json").read_text())["examples"]
        texts += [e["input"] for e in examples]
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:200]]
    texts += [r["question"] for r in rows] + [r["answer"] for r in rows]
    pairs = [(tokenizer.count(t), estimate_tokens(t)) for t in texts]
    assert all(real is not None and estimate >= real for real, estimate in pairs)
    total_real, total_estimate = sum(r for r, _ in pairs), sum(e for _, e in pairs)
    assert total_estimate < 2 * total_real  # conservative, not useless


def test_the_fast_ascii_estimate_counts_what_the_piece_by_piece_count_counts(shared_data: Path) -> None:
    """The estimate counts ASCII text by kinds of character (textgrad.serving.tokenizers._ascii_pieces); the
    plain loop over pieces (_pieces) is the definition, kept for the rest: both give the same number."""
    from textgrad.serving.tokenizers import _ascii_pieces, _pieces

    texts = [e["input"] for task in ("object_counting", "word_sorting", "dyck_languages", "multistep_arithmetic_two")
             for e in json.loads((shared_data / "bbh" / f"{task}.json").read_text())["examples"]]
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]]
    texts = [text for text in texts + [r["question"] for r in rows] + [r["answer"] for r in rows] if text.isascii()]
    assert len(texts) > 1000
    rng = random.Random(7)
    for alphabet in ("ab Z09 \n\t\r\x0b\x0c\x1c\x1f.,;!_-", "aaaab  0\n.", "xyz 1 2  3\n\n\t"):
        texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    texts += ["", " ", " 7", "a 7", "a  7", "a\n 7", "abcd", "abcdefg 12  ab\n\n\n\n\n\n\n\n\nx"]
    assert [_ascii_pieces(text) for text in texts] == [_pieces(text) for text in texts]
    assert _pieces("abcd 7") == 2 + 1 + 1  # ceil(4 / 3) pieces of the word, the lone space before a digit, the digit
    assert estimate_tokens("abcd 7") == max(math.ceil(4 * 1.1), math.ceil(6 / 4)) == 5


class Windowed:
    """A test double that tells its window and counts words: what fit_request needs of an engine."""

    context_window = 300

    def count_tokens(self, text: str) -> int:
        return count_words(text)

    estimate_tokens = count_tokens


def test_feedback_items_are_left_out_whole_the_earliest_first_and_one_always_stays() -> None:
    items = tuple(words(50, 100 * i) for i in range(5))
    fields = {"feedback": budget.Droppable(items=items, noun="feedback items")}
    request = budget.fit_request(Windowed(), 300, system=None, user="Feedback:\n{feedback}", fields=fields,
                                 max_tokens=100)
    sent = request.messages[-1]["content"]
    # 1 + 250 words and 38 of overhead (one user message, no system) beside a reply lowered to a quarter of the
    # window (75): 64 words too many. The earliest two items go, each whole; the last three stay word for word.
    assert request.dropped == 2 and sent == "Feedback:\n" + "\n\n".join(items[2:])
    assert request.max_tokens == 75 and count_words(sent) + 38 + request.max_tokens <= 300
    one = budget.fit_request(Windowed(), 300, system=None, user="Feedback:\n{feedback}", max_tokens=100,
                             fields={"feedback": budget.Droppable(items=(words(150), words(150, 150)))})
    assert one.dropped == 1 and one.messages[-1]["content"] == "Feedback:\n" + words(150, 150)
    # The last item stays whole or the request is not sent at all: it is never cut.
    with pytest.raises(ContextOverflowError, match="no text is cut"):
        budget.fit_request(Windowed(), 300, system=None, user="{feedback}", max_tokens=100,
                           fields={"feedback": budget.Droppable(items=(words(10), words(250)))})


def test_a_prompt_that_fits_the_window_but_not_beside_its_reply_gets_a_lower_reply_limit() -> None:
    # 60 words and the chat overhead fit a window of 200, but not beside a 150-token reply. The budget's first
    # check must count the reply's room, or the request goes out as written and the server rejects it.
    request = budget.fit_request(Windowed(), 200, system=words(30), user=words(30, 100), fields={}, max_tokens=150)
    overhead = message_overhead(request.messages)
    assert 60 + overhead <= 200 < 60 + overhead + 150
    assert [m["content"] for m in request.messages] == [words(30), words(30, 100)]  # nothing cut
    assert request.lowered and request.max_tokens == 200 - 60 - overhead


def test_a_text_that_cannot_fit_is_never_cut_the_call_is_skipped_and_counted() -> None:
    engine = Windowed()
    engine.stats = EngineStats()
    engine.chat = lambda messages, max_tokens: pytest.fail("an over-long request was sent")  # type: ignore[attr-defined]
    with pytest.raises(ContextOverflowError, match="300-token window"):
        budget.generate(engine, words(260), system_prompt="Count the objects.", max_tokens=64)
    assert engine.stats.context_skipped == 1 and engine.stats.context_shortened == 0


LLAMA_SERVER = {"error": {"code": 400, "message": CONTEXT_ERROR_MESSAGE, "type": "exceed_context_size_error",
                          "n_prompt_tokens": 2238, "n_ctx": 2048}}
LLAMA_CPP_PYTHON = {"message": "This model's maximum context length is 2048 tokens. However, you requested 2494 "
                               "tokens (2238 in the messages, 256 in the completion). Please reduce the length of "
                               "the messages or completion.", "type": "invalid_request_error",
                    "code": "context_length_exceeded"}
VLLM = {"object": "error", "message": "This model's maximum context length is 2048 tokens. However, you requested "
                                      "2494 tokens (2238 in the messages, 256 in the completion).",
        "type": "BadRequestError", "code": 400}


@pytest.mark.parametrize("body", [LLAMA_SERVER, LLAMA_CPP_PYTHON, VLLM], ids=["llama-server", "llama-cpp-python",
                                                                             "vllm"])
def test_overflow_replies_are_recognised_with_the_sizes_they_state(body: Any) -> None:
    assert is_overflow(400, body)
    assert overflow_sizes(body) == (2048, 2238)


def test_other_bad_requests_are_not_overflows() -> None:
    assert not is_overflow(400, {"error": {"message": "temperature must be between 0 and 2"}})
    assert not is_overflow(500, LLAMA_SERVER)


# ---------------------------------------------------------------- what the server says


def test_windows_are_read_from_vllm_llama_server_and_ollama(json_server: Any, runtime: Runtime) -> None:
    vllm = json_server({"/v1/models": {"data": [{"id": "other", "max_model_len": 9999},
                                                {"id": "m", "max_model_len": 4096}]}})
    assert discover_window(runtime.http, "vllm", vllm.base_url, "m", "k") == 4096
    with FakeServer(max_context=3000) as llama:
        assert discover_window(runtime.http, "local", llama.base_url, "fake-model", "k") == 3000
    show = {"model_info": {"llama.context_length": 131072}, "parameters": "temperature 0.7\nnum_ctx 8192"}
    ollama = json_server({"/api/show": show})
    assert discover_window(runtime.http, "ollama", ollama.base_url, "m", "k") == 8192
    # without num_ctx Ollama runs at its own default, not at the trained length
    ollama_default = json_server({"/api/show": {"model_info": {"llama.context_length": 131072}}})
    assert discover_window(runtime.http, "ollama", ollama_default.base_url, "m", "k") == 2048
    silent = json_server({"/v1/models": {"data": [{"id": "m"}]}, "/props": None, "/tokenize": None})
    assert discover_window(runtime.http, "vllm", silent.base_url, "m", "k") is None  # no route tells the window


def test_the_window_is_the_smaller_of_flag_and_server_else_a_default(monkeypatch: Any, make_fake_server: Any,
                                                                     runtime: Runtime) -> None:
    with FakeServer(max_context=3000) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        assert get_engine("vllm-fake-model").context_window == 3000
        runtime.configure(max_context=1024)
        engine = get_engine("vllm-fake-model")
        assert (engine.context_window, engine.context.source) == (1024, "--max_context")
        runtime.configure(max_context=8192)  # the flag cannot make the server's window larger
        assert get_engine("vllm-fake-model").context_window == 3000
        runtime.configure(max_context=None)
    silent = make_fake_server(models=("m",), routes={"/props": None, "/tokenize": None})  # reports no window
    monkeypatch.setenv("VLLM_BASE_URL", silent.base_url)
    engine = get_engine("vllm-m")
    assert (engine.context_window, engine.context.source) == (2048, "default for vllm engines")


# ---------------------------------------------------------------- overflow replies


def sent(server: FakeServer) -> list[tuple[str, int, int]]:
    """(messages as JSON, max_tokens, HTTP status) of every chat request the server received."""
    return [(json.dumps(body.get("messages"), sort_keys=True), int(body.get("max_tokens") or 0), status)
            for body, _, status in server.chat_log]


def resent_after_rejection(server: FakeServer) -> list[tuple[str, int]]:
    """Requests sent again, unchanged, after the server had rejected them for their length."""
    rejected: set[tuple[str, int]] = set()
    repeats = []
    for messages, max_tokens, status in sent(server):
        if (messages, max_tokens) in rejected:
            repeats.append((messages, max_tokens))
        if status == 400:
            rejected.add((messages, max_tokens))
    return repeats


def request_sizes(server: FakeServer) -> list[int]:
    """Tokens of each answered request by the server's own count (prompt + max_tokens)."""
    return [sum(math.ceil(len(m["content"]) / 4) for m in json.loads(messages)) + max_tokens
            for messages, max_tokens, status in sent(server) if status == 200]


HIDDEN_WINDOW = {"/props": {}}  # like llama-cpp-python's server: its window is not reported


@pytest.fixture
def hidden_window(monkeypatch: Any) -> Iterator[FakeServer]:
    """A server with a 400-token window that it does not report."""
    with FakeServer(max_context=400, routes=HIDDEN_WINDOW) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        yield server


def test_an_overflow_reply_is_counted_never_retried_and_never_resent(hidden_window: FakeServer) -> None:
    engine = get_engine("vllm-fake-model")
    assert engine.context_window == 2048  # not reported: the default for self-hosted servers
    long_question = words(500)
    with pytest.raises(ContextOverflowError):
        engine.generate(long_question, max_tokens=64)
    stats = engine.stats.as_dict()
    assert stats["context_overflows"] == 1 and stats["retries"] == 0 and stats["failures"] == 0
    assert engine.context_window == 400 and engine.context.source == "stated by an overflow reply"
    with pytest.raises(ContextOverflowError):
        engine.generate(long_question, max_tokens=64)  # known to fail: refused before sending
    assert len(sent(hidden_window)) == 1 and hidden_window.stats["context_rejections"] == 1


def test_an_overflow_reply_gets_the_request_rebuilt_once_for_the_window_it_states(hidden_window: FakeServer) -> None:
    engine = get_engine("vllm-fake-model")
    question = "Sort these words: " + words(150)
    reply = budget.generate(engine, question, system_prompt="Be brief.", max_tokens=300)
    assert reply
    (first, first_max, first_status), (second, second_max, second_status) = sent(hidden_window)
    assert (first_status, second_status) == (400, 200) and second_max < first_max == 300
    # Rebuilt for the 400 tokens the overflow reply stated: the reply's limit lowered, the question sent whole.
    assert json.loads(first) == json.loads(second) and json.loads(second)[1]["content"] == question
    assert request_sizes(hidden_window) == [sum(math.ceil(len(m["content"]) / 4) for m in json.loads(second))
                                            + second_max] and request_sizes(hidden_window)[0] <= 400
    stats = engine.stats.as_dict()
    assert (stats["context_overflows"], stats["context_shortened"], stats["context_skipped"]) == (1, 1, 0)


def test_the_engine_lowers_max_tokens_near_the_edge_of_a_known_window(monkeypatch: Any) -> None:
    with FakeServer(max_context=300) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        engine = get_engine("vllm-fake-model")
        assert engine.generate(words(150), max_tokens=2000)
        (messages, max_tokens, status), = sent(server)
        assert status == 200 and max_tokens < 300 and request_sizes(server)[0] <= 300
        assert engine.stats.context_shortened == 1


# ---------------------------------------------------------------- whole runs in a small window

HETERO = ["--module", "train_hetero_fed", "--task", "BBH_object_counting", "GSM8K", "--split_sizes", "6,6,6",
          "--max_epochs", "3", "--max_steps", "2", "--batch_size", "3", "--aggregate_method", "concat",
          "--test_engine", "vllm-fake-model", "--evaluation_engine", "vllm-fake-model", "--comet_mode", "disabled",
          "--run_name", "run"]


def run_hetero(tmp_path: Path, shared_data: Path, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    assert main([*HETERO, "--data_dir", str(shared_data), "--output_dir", str(tmp_path), *extra]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    return results, events


CUT_MARK = re.compile(r"\[\.\.\.|\.\.\.\]|tokens cut|items dropped")  # what a cut text looked like before issue 27


def _splits(task: Any, shared_data: Path) -> tuple[list[Any], list[Any], list[Any]]:
    data = load_task_data(task, str(shared_data), (6, 6, 6), 42)
    return data.train, data.val, data.test


def test_a_heterogeneous_run_in_an_unreported_small_window_completes(tmp_path: Path, shared_data: Path,
                                                                      monkeypatch: Any) -> None:
    # 512 tokens, unreported: every natural request of this run (512-token answers, 256-token feedback,
    # 512-token optimizer replies) is larger, the reference code's first backward step died of it.
    with FakeServer(max_context=512, routes=HIDDEN_WINDOW) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        results, events = run_hetero(tmp_path, shared_data)
        rejections = server.stats["context_rejections"]
        assert resent_after_rejection(server) == []
        assert max(request_sizes(server)) <= 512
        bodies = server.chat_requests
    # No text was cut to fit (issue 27), though 25 calls could not fit: no request carries a shortening mark,
    # and every question asked is one of the run's questions word for word.
    questions = {ex.question for task in (resolve_task("BBH_object_counting"), resolve_task("GSM8K"))
                 for split in _splits(task, shared_data) for ex in split}
    # About 100 requests (99 to 105 by when the window is learnt), none of them cut.
    assert len(bodies) >= 90 and not any(CUT_MARK.search(m["content"]) for b in bodies for m in b["messages"])
    answers = [b["messages"] for b in bodies if request_kind(b["messages"]) == "answer"]
    assert answers and all(messages[-1]["content"] in questions for messages in answers)
    assert results["rounds_completed"] == 3 and set(results["final_test"]["best"]) == {
        "BBH_object_counting", "GSM8K", "mean"}
    assert rejections >= 1 and results["context_overflows"] == rejections
    window = results["context"]["windows"]["vllm-fake-model"]
    assert window["tokens"] == 512 and window["source"] == "stated by an overflow reply"
    assert results["context"]["shortened_requests"] > 0
    rounds = [e for e in events if e["type"] == "round"]
    assert len(rounds) == 3 and sum(r["context_overflows"] for r in rounds) <= rejections
    assert all("context_overflows" in r["llm"] for r in rounds)
    kinds = {kind for kind, n in server.stats["requests_by_kind"].items() if n}
    assert {"answer", "feedback", "optimizer"} <= kinds  # the backward pass and the optimizer did run


def test_a_reported_window_is_respected_without_a_single_overflow(tmp_path: Path, shared_data: Path,
                                                                  monkeypatch: Any) -> None:
    with FakeServer(max_context=512) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        # a flag larger than the server's window cannot raise it
        results, _ = run_hetero(tmp_path, shared_data, "--max_context", "4096")
        assert server.stats["context_rejections"] == 0 and max(request_sizes(server)) <= 512
    assert results["context_overflows"] == 0 and results["context"]["shortened_requests"] > 0
    assert results["context"]["windows"]["vllm-fake-model"]["source"] == "reported by the server"
    assert results["rounds_completed"] == 3


# ---------------------------------------------------------------- the real embedded server

GROWTH = ("Client {r} found: " + " ".join(
    f"Rule {k}: when a sentence lists household objects, write each object on its own line with its count, "
    "and check number words such as seven or twelve before adding." for k in range(6)))


def test_a_prompt_grown_over_rounds_stays_within_the_window_on_the_real_server(shared_data: Path,
                                                                               local_engine_url: str) -> None:
    window = 1024  # the server runs 8192; a small --max_context keeps the test quick
    current_runtime().configure(max_context=window)
    engine = get_engine("local")
    task = resolve_task("BBH_object_counting")
    data = load_task_data(task, str(shared_data), (3, 3, 3), 42)
    settings = LocalSettings(max_steps=1, batch_size=1, answer_max_tokens=24, feedback_max_tokens=32,
                             optimizer_max_tokens=48)
    prompt = task.starting_prompt()
    sizes, outcomes = [], []
    for round_index in range(3):  # about 260, 740, 1680 tokens
        # concat keeps every client's text: one client kept the prompt, one added rules to it
        clients = [prompt, GROWTH.format(r=round_index) + "\n" + prompt]
        prompt = aggregate_prompts(clients, "concat", [task], engine).prompt
        sizes.append(engine.count_tokens(prompt))
        _, outcome = local_step(prompt, data.train[:1], task, Engines(engine, engine), settings, round_index)
        outcomes.append(outcome)
    skipped = engine.stats.context_skipped
    assert evaluate_prompt(prompt, data.val[:1], task, engine, max_tokens=24).accuracy == 0.0  # skipped: scores 0
    assert engine.stats.context_skipped == skipped + 1
    assert engine.context_window == window and engine.context.source == "--max_context"
    assert sizes[-1] > window  # the prompt alone outgrew the window
    # by the server's own count of every prompt it answered
    assert 0 < engine.context.largest_request <= window
    stats = engine.stats.as_dict()
    assert stats["failures"] == 0 and stats["calls"] + stats["cache_hits"] >= 4 and stats["context_overflows"] == 0
    # The grown prompt is served whole or not at all: its steps are skipped, never trained on a cut prompt
    # (round 2's feedback request cannot hold the prompt, round 3's answer request neither).
    assert [o.format_failure == "context_overflow" for o in outcomes] == [False, True, True]


def test_optimizer_and_merge_replies_may_be_as_long_as_the_text_they_return(monkeypatch: Any) -> None:
    # The flags ask for 32 tokens, the text to give back is about 700 (by the bench server's count, which
    # cuts longer replies with finish_reason "length"): each reply is given room for the whole text.
    text = " ".join(f"Step {i}: check item {i} twice before you count it." for i in range(60))
    with FakeServer(flavour="vllm", cut_at_max_tokens=True) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        engine = get_engine("vllm-fake-model")
        variable = tg.Variable(text, "system prompt")
        variable.gradients.append(tg.Variable("Count carefully.", "feedback", requires_grad=False))
        optimizer = tg.TGD([variable], engine=engine, max_tokens=32)
        optimizer.step()
        merged = aggregate_prompts([text, text + " Be brief."], "summarization", [resolve_task("GSM8K")], engine,
                                   max_tokens=32)
        asked = [max_tokens for _, max_tokens in server.stats["prompts_seen"]]
    assert optimizer.failures == [None] and variable.value.startswith("Step 0:") and len(variable.value) > len(text)
    assert merged.failure is None and merged.prompt.endswith("Be brief.")
    assert len(asked) == 2 and min(asked) >= math.ceil(len(text) / 4) + 16


def test_a_reply_cut_at_its_limit_is_a_truncated_step_never_no_tags(monkeypatch: Any) -> None:
    task = resolve_task("synthetic_object_counting")
    batch = [tg_example for tg_example in load_task_data(task, None, (3, 1, 1), 1).train]
    with FakeServer(flavour="vllm", cut_at_max_tokens=True) as server:
        monkeypatch.setenv("VLLM_BASE_URL", server.base_url)
        engine = get_engine("vllm-fake-model")
        # A reply budget fixed too small for the text, as before: the room the budget adds is taken away.
        monkeypatch.setattr(budget, "room_to_return", lambda engine, texts: 0)
        _, outcome = local_step("Count. " * 40, batch, task, Engines(engine, engine),
                                LocalSettings(optimizer_max_tokens=24, answer_max_tokens=64))
    assert outcome.format_failure == "truncated" and not outcome.accepted


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_llama_server(monkeypatch: Any, tmp_path: Path) -> Iterator[str]:
    """A second real llama.cpp server (llama-cpp-python) with a 512-token window it does not report."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = find_packaged_model()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below, after the process
    # llama_cpp.server itself (no /props), with the model parameters of our wrapper that run on every CPU.
    serve = "import textgrad.serving.llamacpp_server; from llama_cpp.server.__main__ import main; main()"
    process = subprocess.Popen([sys.executable, "-c", serve, "--model", model, "--model_alias",
                                Path(model).stem, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512",
                                "--n_threads", "2"], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while not _answers(base_url + "/models"):
            assert process.poll() is None and time.monotonic() < deadline, "the llama.cpp server did not start"
            time.sleep(0.25)
        monkeypatch.setenv("LOCAL_BASE_URL", base_url)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_the_reference_crash_request_is_skipped_and_counted_by_a_real_small_window_server(
        small_llama_server: str) -> None:
    # The reference run died here: a feedback request carrying a looping 1,300-token answer, larger than the
    # server's window, rejected with HTTP 400 and retried unchanged. Same shape, a 512-token window. No text is
    # cut to fit, so the request cannot be sent in any form: it is skipped and counted, and the run goes on.
    engine = get_engine("local")
    assert engine.context_window == 2048  # the server does not say: the default for self-hosted servers
    prompt = tg.Variable(resolve_task("BBH_object_counting").starting_prompt(), "system prompt", requires_grad=True)
    model = tg.BlackboxLLM(engine, system_prompt=prompt, max_tokens=24, feedback_max_tokens=32)
    question = tg.Variable("I have a chair, two beds and a car. How many objects do I have?", "question",
                           requires_grad=False)
    response = model(question)
    response.set_value("Let me count. " + "I have a chair and a chair and a chair. " * 120 + "Answer: 9")
    verdict = tg.StringBasedFunction(lambda response: "incorrect; the expected final answer is 4",
                                     "Checking the final answer")({"response": response})
    verdict.backward(engine)

    assert prompt.gradients == [] and model.feedback_skipped == 1
    stats = engine.stats.as_dict()
    assert stats["context_overflows"] == 1 and stats["retries"] == 0 and stats["context_skipped"] == 1
    assert stats["failures"] == 0 and stats["context_shortened"] == 0
    assert engine.context_window == 512 and engine.context.source == "stated by an overflow reply"
    assert 0 < engine.context.largest_request <= 512  # the answer request, by the server's own token count
