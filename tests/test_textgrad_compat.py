"""TextGrad's own idioms on our textgrad: its README quick start and the prompt-optimization loop of its
tutorial against the bench server (as engine `gpt-4o`), a custom tg.EngineLM, and the Variable methods."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

import textgrad as tg
from bench.fake_server import FakeServer
from bench.fake_server.replies import edited_prompt, feedback_reply, request_kind
from textgrad import prompts
from textgrad.errors import ContextOverflowError, EngineError
from utils.tasks.synthetic import generate_examples


@pytest.fixture
def gpt4o_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The bench server posing as OpenAI's gpt-4o: it answers 404 to any other model name."""
    with FakeServer(model="gpt-4o") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-bench")
        yield server


def seen(server: FakeServer, kind: str) -> list[tuple[str | None, str]]:
    """(system, user) of every request of one kind the server answered, in arrival order."""
    out = []
    for messages, _ in server.stats["prompts_seen"]:
        if request_kind(messages) == kind:
            system = next((m["content"] for m in messages if m["role"] == "system"), None)
            out.append((system, messages[-1]["content"]))
    return out


# ---------------------------------------------------------------- TextGrad's README quick start


def test_readme_quick_start_runs_unchanged(gpt4o_server: FakeServer) -> None:
    # TextGrad's README quick start as published (engine names, backward engine, TextLoss without engine).
    tg.set_backward_engine("gpt-4o", override=True)

    # Step 1: Get an initial response from an LLM.
    model = tg.BlackboxLLM("gpt-4o")
    question_string = ("If it takes 1 hour to dry 25 shirts under the sun, "
                       "how long will it take to dry 30 shirts under the sun? "
                       "Reason step by step")

    question = tg.Variable(question_string,
                           role_description="question to the LLM",
                           requires_grad=False)

    answer = model(question)
    answer.set_role_description("concise and accurate answer to the question")

    optimizer = tg.TGD(parameters=[answer])
    evaluation_instruction = (f"Here's a question: {question_string}. "
                              "Evaluate any given answer to this question, "
                              "be smart, logical, and very critical. "
                              "Just provide concise feedback.")
    loss_fn = tg.TextLoss(evaluation_instruction)

    first_answer = answer.value
    loss = loss_fn(answer)
    loss.backward()
    optimizer.step()

    stats = gpt4o_server.stats
    # Every request named model gpt-4o (the server refuses others): the answer, the loss, one TGD step;
    # no feedback call, since the question does not require a gradient.
    assert (stats["requests"], stats["completed"]) == (3, 3)
    assert stats["requests_by_kind"] == {"answer": 2, "optimizer": 1}
    assert first_answer.startswith("I read the question closely")
    assert seen(gpt4o_server, "answer")[1] == (evaluation_instruction, first_answer)
    assert [g.value for g in answer.gradients] == [loss.value]
    (_, optimizer_request), = seen(gpt4o_server, "optimizer")
    assert "concise and accurate answer to the question" in optimizer_request
    assert answer.value == edited_prompt(first_answer, loss.value) != first_answer
    assert optimizer.updated == [True]


# ---------------------------------------------------------------- the prompt-optimization tutorial's loop

STARTING_SYSTEM_PROMPT = ("You will answer a reasoning question. Think step by step. "
                          "The last line of your response should be of the following format: 'Answer: $VALUE' "
                          "where VALUE is a numerical value.")


def _last_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d+", text)
    return numbers[-1] if numbers else None


def test_prompt_optimization_loop_with_summed_losses(gpt4o_server: FakeServer) -> None:
    llm_api_eval = tg.get_engine(engine_name="gpt-4o")
    llm_api_test = tg.get_engine("experimental:gpt-4o")  # TextGrad's LiteLLM spelling: the same engine
    assert llm_api_test is llm_api_eval and llm_api_test.model == "gpt-4o"
    tg.set_backward_engine(llm_api_eval, override=True)

    system_prompt = tg.Variable(STARTING_SYSTEM_PROMPT, requires_grad=True,
                                role_description="system prompt to the language model")
    model = tg.BlackboxLLM(llm_api_test, system_prompt)
    optimizer = tg.TextualGradientDescent(engine=llm_api_eval, parameters=[system_prompt])

    def string_based_equality_fn(prediction: tg.Variable, ground_truth_answer: tg.Variable) -> int:
        return int(_last_number(prediction.value) == ground_truth_answer.value)

    eval_fn = tg.StringBasedFunction(string_based_equality_fn,
                                     function_purpose="Whether the prediction states the correct number")

    examples = generate_examples("synthetic_object_counting", 6, seed=11)
    batches = [examples[:3], examples[3:]]
    prompts_used = [system_prompt.value]
    for batch in batches:
        optimizer.zero_grad()
        losses = []
        for example in batch:
            x = tg.Variable(example.question, requires_grad=False, role_description="query to the language model")
            y = tg.Variable(example.target, requires_grad=False, role_description="correct answer for the query")
            response = model(x)
            losses.append(eval_fn(inputs=dict(prediction=response, ground_truth_answer=y)))
        assert all(loss.value in ("0", "1") for loss in losses)
        total_loss = tg.sum(losses)
        total_loss.backward()

        # One feedback per example, in example order although the three calls ran concurrently;
        # 3, not 6, in the second batch: zero_grad cleared the first batch's.
        feedback_requests = [user for _, user in seen(gpt4o_server, "feedback")]
        expected = [feedback_reply(next(r for r in feedback_requests if example.question in r)) for example in batch]
        assert [g.value for g in system_prompt.gradients] == expected
        feedback = system_prompt.get_gradient_text()
        optimizer.step()
        assert system_prompt.value == edited_prompt(prompts_used[-1], feedback)
        prompts_used.append(system_prompt.value)

    assert gpt4o_server.stats["requests_by_kind"] == {"answer": 6, "feedback": 6, "optimizer": 2}
    # The second batch was answered with the prompt the first step wrote.
    assert [system for system, _ in seen(gpt4o_server, "answer")] == [prompts_used[0]] * 3 + [prompts_used[1]] * 3
    assert all("Whether the prediction states the correct number: " in r for _, r in seen(gpt4o_server, "feedback"))
    assert len(set(prompts_used)) == 3


def test_experimental_prefix_reaches_the_server_without_it(gpt4o_server: FakeServer) -> None:
    engine = tg.get_engine("experimental:gpt-4o")
    assert engine.name == "gpt-4o"
    assert engine.generate("What is 2+2?").startswith("I read the question closely")
    with pytest.raises(EngineError, match="empty engine name"):
        tg.get_engine("experimental:")


# ---------------------------------------------------------------- a custom EngineLM


class NotebookEngine(tg.EngineLM):
    """Written the way TextGrad users write one: generate() only, no super().__init__()."""

    model_string = "notebook"

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str, dict[str, Any]]] = []

    def generate(self, prompt: str, system_prompt: str | None = None, **kwargs: Any) -> str:
        self.calls.append((system_prompt, prompt, kwargs))
        if system_prompt == prompts.OPTIMIZER_SYSTEM:
            return "<IMPROVED_VARIABLE>\nCount each item once, then add.\n</IMPROVED_VARIABLE>"
        if system_prompt == prompts.FEEDBACK_SYSTEM:
            return "Tell the model to count each item once."
        if system_prompt == "Judge the answer.":
            return "The count is off by one."
        return "Answer: 7"


def test_custom_engine_lm_serves_model_loss_backward_and_optimizer() -> None:
    engine = NotebookEngine()
    assert isinstance(engine, tg.EngineLM) and issubclass(tg.ChatEngine, tg.EngineLM)
    system_prompt = tg.Variable("Count the items.", role_description="system prompt", requires_grad=True)
    model = tg.BlackboxLLM(engine, system_prompt=system_prompt)
    loss_fn = tg.TextLoss("Judge the answer.", engine=engine)
    optimizer = tg.TGD(parameters=model.parameters(), engine=engine)
    tg.set_backward_engine(engine, override=True)

    question = tg.Variable("I have a pen and a cup. How many objects?", role_description="question",
                           requires_grad=False)
    response = model(question)
    loss = loss_fn(response)
    loss.backward()
    optimizer.step()

    assert response.value == "Answer: 7" and loss.value == "The count is off by one."
    assert [system for system, _, _ in engine.calls] == [
        "Count the items.", "Judge the answer.", prompts.FEEDBACK_SYSTEM, prompts.OPTIMIZER_SYSTEM]
    assert engine.calls[0][1] == question.value and engine.calls[1][1] == "Answer: 7"
    assert "The count is off by one." in engine.calls[2][1]  # the loss reached the feedback request
    assert [g.value for g in system_prompt.gradients] == ["Tell the model to count each item once."]
    assert system_prompt.value == "Count each item once, then add."
    # Our reply limits reach generate() as max_tokens: answer 512, loss 256, feedback 256 by default.
    assert [kwargs.get("max_tokens") for _, _, kwargs in engine.calls[:3]] == [512, 256, 256]
    assert engine.stats.calls == 4


def test_engine_lm_without_kwargs_and_without_a_window_gets_requests_as_written() -> None:
    class Minimal(tg.EngineLM):
        def generate(self, prompt, system_prompt=None):  # no **kwargs: max_tokens is not passed
            return f"[{system_prompt}] {prompt[:5]}"

    long_question = "word " * 5000
    reply = tg.BlackboxLLM(Minimal(), system_prompt="Be brief.")(tg.Variable(long_question, role_description="q"))
    assert reply.value == "[Be brief.] word "
    assert tg.EngineLM.context_window is None


def test_engine_lm_that_tells_its_window_gets_our_budget() -> None:
    class Windowed(NotebookEngine):
        context_window = 300

        def count_tokens(self, text: str) -> int:
            return len(text.split())

    engine = Windowed()
    model = tg.BlackboxLLM(engine, system_prompt="Count the items.", max_tokens=100)
    question = " ".join(f"w{i}" for i in range(180))
    model(tg.Variable(question, role_description="question"))
    (_, sent, kwargs), = engine.calls
    assert sent == question  # whole: only the reply's limit was lowered to fit
    assert len(sent.split()) + len("Count the items.".split()) + kwargs["max_tokens"] <= 300
    assert 75 <= kwargs["max_tokens"] < 100
    assert engine.stats.context_shortened == 1
    with pytest.raises(ContextOverflowError, match="does not fit the 300-token window"):
        model(tg.Variable(" ".join(f"w{i}" for i in range(1000)), role_description="question"))
    assert len(engine.calls) == 1 and engine.stats.context_skipped == 1  # never sent, never cut


def test_engines_are_checked_and_defaults_explained() -> None:
    with pytest.raises(TypeError, match="tg.EngineLM"):
        tg.BlackboxLLM(42)
    with pytest.raises(ValueError, match="set_backward_engine"):
        tg.TextLoss("Judge it.")
    with pytest.raises(ValueError, match="set_backward_engine"):
        tg.TGD(parameters=[tg.Variable("x", role_description="text")])
    with pytest.raises(TypeError):
        tg.EngineLM()  # abstract: generate() is the one method to write


# ---------------------------------------------------------------- Variable methods


def test_variable_role_short_value_and_gradients() -> None:
    v = tg.Variable(" ".join(f"w{i}" for i in range(1, 26)), role_description="draft")
    v.set_role_description("final text")
    assert v.get_role_description() == "final text" and v.role_description == "final text"
    assert v.get_short_value(2) == "w1 w2 (...) w24 w25"
    assert v.get_short_value() == "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 (...) w16 w17 w18 w19 w20 w21 w22 w23 w24 w25"
    exactly_twice = tg.Variable("a b c d", role_description="short")
    assert exactly_twice.get_short_value(2) == "a b c d"
    assert tg.Variable("a b c d e", role_description="short").get_short_value(2) == "a b (...) d e"
    v.gradients.append(tg.Variable("be shorter", role_description="feedback", requires_grad=False))
    v.reset_gradients()
    assert v.gradients == []
    assert str(v) == v.value


def test_generate_graph_is_dot_source() -> None:
    question = tg.Variable('How many "pens"?', role_description="question", requires_grad=False)
    prompt = tg.Variable("Count.\nThen answer.", role_description="system prompt")
    answer = tg.Variable("Answer: 2", role_description="response", predecessors=[prompt, question])
    answer.gradients.append(tg.Variable("show the count", role_description="feedback", requires_grad=False))
    assert answer.generate_graph() == (
        "digraph textgrad {\n"
        "  rankdir=TB;\n"
        "  node [shape=box];\n"
        '  v0 [label="system prompt\\nCount.\\nThen answer."];\n'
        '  v1 [label="question\\nHow many \\"pens\\"?", style=dashed];\n'
        '  v2 [label="response\\nAnswer: 2"];\n'
        "  v0 -> v2;\n"
        "  v1 -> v2;\n"
        "}\n")
    assert '  v2 [label="response\\nAnswer: 2\\ngradients: show the count"];\n' in answer.generate_graph(
        print_gradients=True)
