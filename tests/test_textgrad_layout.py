"""TextGrad's module paths and the behaviour its users rely on, in any checkout (CI has no copy of TextGrad:
tests/test_textgrad_upstream.py runs TextGrad's own tests where one is at hand). And the runtime: state
a caller makes and throws away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import textgrad as tg
from textgrad import prompts
from textgrad.autograd import FormattedLLMCall, LLMCall, StringBasedFunction
from textgrad.engine import get_engine
from textgrad.engine.base import CachedEngine, EngineLM
from textgrad.engine.openai import ChatOpenAI
from textgrad.serving.runtime import Runtime, current_runtime, use_runtime
from textgrad.serving.settings import Settings

SERVER_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OLLAMA_BASE_URL", "OLLAMA_API_KEY", "VLLM_BASE_URL",
               "SGLANG_BASE_URL", "LOCAL_BASE_URL")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SERVER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class Echo(EngineLM):
    """Gives the prompt back, as TextGrad's tests' IdempotentEngine does; keeps (system, prompt)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        self.calls.append((system_prompt, prompt))
        return "Tell it to check the count." if system_prompt in (prompts.FEEDBACK_SYSTEM,
                                                                   prompts.AGGREGATE_SYSTEM) else prompt


# ---------------------------------------------------------------- engines where TextGrad users find them


def test_every_engine_name_gives_a_model_string_and_a_base_url(clean_env: pytest.MonkeyPatch) -> None:
    assert (get_engine("ollama-llama3").model_string, get_engine("ollama-llama3").base_url) == (
        "llama3", "http://localhost:11434/v1")
    assert (get_engine("vllm-m").model_string, get_engine("vllm-m").base_url) == ("m", "http://localhost:8000/v1")
    assert get_engine("sglang-m").base_url == "http://localhost:30000/v1"
    clean_env.setenv("OPENAI_API_KEY", "sk-test")
    gpt = get_engine("gpt-4o")
    assert (gpt.model_string, gpt.base_url) == ("gpt-4o", "https://api.openai.com/v1")
    assert get_engine("experimental:gpt-4o") is gpt
    assert isinstance(gpt, ChatOpenAI) and isinstance(gpt, EngineLM) and tg.ChatEngine is ChatOpenAI


def test_chat_openai_as_textgrad_builds_it(clean_env: pytest.MonkeyPatch, fake_server: Any) -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        ChatOpenAI()  # OpenAI itself without a key
    clean_env.setenv("OPENAI_API_KEY", "sk-test")
    assert ChatOpenAI().model_string == "gpt-3.5-turbo-0613"  # TextGrad's default
    ollama = ChatOpenAI(model_string="llama3", base_url="http://localhost:11434/v1")
    assert (ollama.backend.kind, ollama.model_string) == ("ollama", "llama3")
    # any OpenAI-compatible server by its URL, through our transport; the engine's own system prompt
    engine = ChatOpenAI("fake-model", system_prompt="Be brief.", base_url=fake_server.base_url)
    assert engine.generate("hi") == "reply from fake-model to: hi"
    assert fake_server.chat_requests[-1]["messages"] == [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "hi"}]
    assert engine.stats.calls == 1


def test_a_cached_engine_keeps_replies_on_disk(tmp_path: Path) -> None:
    class Counting(EngineLM, CachedEngine):
        def __init__(self) -> None:
            super().__init__(cache_path=str(tmp_path / "cache"))
            self.model_calls = 0

        def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
            cached = self._check_cache(prompt)
            if cached is not None:
                return cached
            self.model_calls += 1
            self._save_cache(prompt, prompt.upper())
            return prompt.upper()

    first = Counting()
    assert first.generate("hello") == first.generate("hello") == "HELLO" and first.model_calls == 1
    later = Counting()  # another instance, another process alike: the entry is on disk
    assert later.generate("hello") == "HELLO" and later.model_calls == 0 and later.generate("bye") == "BYE"


# ---------------------------------------------------------------- autograd


def test_llm_calls_answer_and_send_feedback_to_what_requires_it() -> None:
    engine = Echo()
    question = tg.Variable("How many?", role_description="question")
    answer = LLMCall(engine)(question)
    assert (answer.value, answer.role_description, answer.predecessors) == (
        "How many?", "response from the language model", [question])

    fields = {"question": None, "draft": None}
    call = FormattedLLMCall(engine, "Q: {question}\nA: {draft}", fields)
    draft = tg.Variable("two", role_description="draft answer")
    constant = tg.Variable("How many pens?", role_description="question", requires_grad=False)
    out = call({"question": constant, "draft": draft}, response_role_description="checked answer")
    assert (out.value, out.role_description) == ("Q: How many pens?\nA: two", "checked answer")
    out.gradients.append(tg.Variable("the count is wrong", role_description="evaluation"))
    out.backward(engine)
    assert [g.value for g in draft.gradients] == ["Tell it to check the count."] and constant.gradients == []
    feedback_request = engine.calls[-1][1]
    assert "Q: How many pens?\nA: two" in feedback_request and "the count is wrong" in feedback_request
    with pytest.raises(ValueError, match="the fields"):
        call({"question": constant})


def test_sum_joins_with_a_newline_and_passes_feedback_on() -> None:
    a = tg.Variable("Line1", role_description="role1")
    b = tg.Variable("Line2", role_description="role2")
    c = tg.Variable("Line3", role_description="role1", requires_grad=False)
    total = tg.sum([a, b, c])
    assert total.value == "Line1\nLine2\nLine3"
    assert total.role_description == "a combination of the following: role1, role2"
    assert total.requires_grad and not tg.sum([c]).requires_grad
    feedback = tg.Variable("shorter", role_description="feedback")
    total.gradients.append(feedback)
    total.backward(Echo())
    assert a.gradients == [feedback] and b.gradients == [feedback] and c.gradients == []


def test_aggregate_condenses_several_feedbacks_into_one_call() -> None:
    engine = Echo()
    a, b = tg.Variable("x", role_description="r"), tg.Variable("y", role_description="r")
    total = tg.aggregate([a, b])
    assert total.value == "x\ny"
    for text in ("too long", "wrong unit"):
        total.gradients.append(tg.Variable(text, role_description="feedback"))
    total.backward(engine)
    assert [g.value for g in a.gradients] == [g.value for g in b.gradients] == ["Tell it to check the count."]
    (system, request), = engine.calls
    assert system == prompts.AGGREGATE_SYSTEM and "too long" in request and "wrong unit" in request
    single = tg.aggregate([tg.Variable("z", role_description="r")])
    single.gradients.append(tg.Variable("only one", role_description="feedback"))
    single.backward(engine)
    assert len(engine.calls) == 1 and single.predecessors[0].gradients[0].value == "only one"


def test_string_based_function_and_gradients_as_a_set_or_a_list() -> None:
    check = StringBasedFunction(lambda prediction: int(prediction.value == "3"), "Whether the count is 3")
    prediction = tg.Variable("3", role_description="prediction")
    assert check({"prediction": prediction}, response_role_description="score").value == "1"
    grad = tg.Variable("grad", role_description="feedback")
    prediction.gradients.add(grad)
    prediction.gradients.add(grad)  # a set in TextGrad: the same feedback is kept once
    prediction.gradients.append(tg.Variable("more", role_description="feedback"))
    assert prediction.get_gradient_text() == "grad\n\nmore"
    assert tg.autograd.FormattedLLMCall is FormattedLLMCall and tg.optimizer.TGDMomentum is tg.TGDMomentum


# ---------------------------------------------------------------- the runtime


def test_runtimes_keep_their_state_apart(runtime: Runtime, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tg.set_backward_engine(Echo(), override=True)
    engine = get_engine("vllm-m")
    other = Runtime(Settings(cache_dir=str(tmp_path / "other"), max_concurrency=2))
    with use_runtime(other):
        assert current_runtime() is other
        with pytest.raises(ValueError, match="no backward engine set"):
            tg.TGD([tg.Variable("x", role_description="text")])
        assert get_engine("vllm-m") is not engine and get_engine("vllm-m").request_slot().size == 2
        other.stop.request()
    assert current_runtime() is runtime and not runtime.stop.is_set()
    assert get_engine("vllm-m") is engine and engine.request_slot().size == 16
    assert isinstance(tg.TGD([tg.Variable("x", role_description="text")]).engine, Echo)
    assert [e.name for e in runtime.engines()] == ["vllm-m"] and [e.name for e in other.engines()] == ["vllm-m"]
    other.close()
