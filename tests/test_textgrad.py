"""Our textual-autograd engine: graph, backward, TGD; fast tests with a scripted engine and one real run."""

from __future__ import annotations

import json

import pytest
from scripted_engine import ScriptedEngine

import textgrad as tg
from textgrad import structured
from textgrad.engine import get_engine
from textgrad.optimizer import IMPROVED_REPLY, INSTRUCTIONS_REPLY
from textgrad.serving.backends import BACKENDS
from textgrad.serving.transport import ChatReply
from utils.tasks.evaluation import JUDGE_REPLY
from utils.tasks.scoring import score_numeric


def build_step(engine, questions_and_targets):
    prompt = tg.Variable("Count the objects. End with 'Answer: <number>'.", "system prompt", requires_grad=True)
    model = tg.BlackboxLLM(engine, system_prompt=prompt, max_tokens=32, feedback_max_tokens=32)
    losses = []
    for question, target in questions_and_targets:
        q = tg.Variable(question, "question", requires_grad=False)
        response = model(q)
        t = tg.Variable(target, "correct answer", requires_grad=False)
        losses.append(tg.StringBasedFunction(
            lambda response, target: "correct" if score_numeric(response.value, target.value)
            else f"wrong, expected {target.value}",
            "Checking the answer")({"response": response, "target": t}))
    return prompt, tg.sum(losses)


def test_backward_reaches_the_prompt_once_per_example_and_not_the_questions():
    engine = ScriptedEngine()
    prompt, total = build_step(engine, [("q1", "1"), ("q2", "2"), ("q3", "3")])
    total.backward(engine)
    assert len(prompt.gradients) == 3
    assert engine.count("feedback") == 3
    # the judgement travelled from the loss through the response into the feedback request
    requests = [p for k, _, p in engine.calls if k == "feedback"]
    assert any("wrong, expected 2" in r for r in requests)
    assert all(g.role_description.startswith("feedback to the") for g in prompt.gradients)
    leaves = [v for v in total.predecessors[0].predecessors if v.role_description == "correct answer"]
    assert leaves and not leaves[0].gradients


def test_gradients_arrive_in_example_order_whatever_order_calls_finish():
    import time

    class Slow(ScriptedEngine):
        def generate(self, prompt, system_prompt=None, **kw):
            if self.kind_of(system_prompt) == "feedback":
                time.sleep(0.05 if "q1" in prompt else 0.0)  # the first example finishes last
                return f"feedback for {'q1' if 'q1' in prompt else 'q2' if 'q2' in prompt else 'q3'}"
            return super().generate(prompt, system_prompt, **kw)

    engine = Slow()
    prompt, total = build_step(engine, [("q1", "1"), ("q2", "2"), ("q3", "3")])
    total.backward(engine)
    assert [g.value for g in prompt.gradients] == ["feedback for q1", "feedback for q2", "feedback for q3"]


def test_tgd_updates_from_tags_and_counts_missing_tags():
    engine = ScriptedEngine()
    variable = tg.Variable("old text", "instructions")
    variable.gradients.append(tg.Variable("be clearer", "feedback", requires_grad=False))

    engine.generate = lambda *a, **k: "Here you go: <IMPROVED_VARIABLE>\n new text \n</IMPROVED_VARIABLE>"
    optimizer = tg.TGD([variable], engine=engine)
    optimizer.step()
    assert variable.value == "new text" and optimizer.updated == [True] and optimizer.format_failures == 0

    for bad_reply in ["new text without tags", "", "<IMPROVED_VARIABLE>   </IMPROVED_VARIABLE>",
                      "<IMPROVED_VARIABLE>never closed"]:
        engine.generate = lambda *a, reply=bad_reply, **k: reply
        optimizer.step()
        assert variable.value == "new text" and optimizer.updated == [False]
    assert optimizer.format_failures == 4
    assert tg.TextualGradientDescent is tg.TGD


@pytest.mark.parametrize(("text", "finish", "structured_reply", "value", "failure"), [
    ('{"improved_text": "Count twice."}', "stop", True, "Count twice.", None),
    ('{ "improved_text" : "The edited text is: Count twice." }', "stop", True, "Count twice.", None),
    ('Here it is:\n```json\n{"improved_text": "List items."}\n```', "stop", True, "List items.", None),
    ('{ "improved_text": "Count.\nThen check." }', "stop", True, "Count.\nThen check.", None),  # raw newline
    ('{"improved_text": "List it', "stop", True, None, "unparseable_json"),
    ('{"improved_text": "List it', "length", True, None, "truncated"),
    ('{"other": "List items."}', "stop", True, None, "unparseable_json"),
    ('{"improved_text": "   "}', "stop", True, None, "empty"),
    ("", "stop", True, None, "empty"),
    ("", "length", False, None, "truncated"),
    ("<IMPROVED_VARIABLE>\nNew text.\n</IMPROVED_VARIABLE> and then it rambled on", "length", False, "New text.",
     None),
    ("<IMPROVED_VARIABLE>\nNew text, cut", "length", False, None, "truncated"),
    ("<IMPROVED_VARIABLE>\nNew text, never closed", "stop", False, None, "no_tags"),
    ("<IMPROVED_VARIABLE> </IMPROVED_VARIABLE>", "stop", False, None, "empty"),
    ("New text without tags.", None, False, None, "no_tags"),
])
def test_a_reply_gives_its_text_or_the_kind_of_failure(text, finish, structured_reply, value, failure):
    answer = structured.extract(ChatReply(text, finish), IMPROVED_REPLY, structured=structured_reply)
    assert (answer.value, answer.failure) == (value, failure)


@pytest.mark.parametrize(("text", "structured_reply", "verdict", "failure"), [
    ('{"verdict": "No"}', True, "No", None), ('{"verdict": "yes"}', True, "Yes", None),
    ("Yes.", False, "Yes", None), ("No, they differ.", False, "No", None),
    ("They mean the same thing.", False, None, "not_a_choice"), ('{"verdict": ""}', True, None, "empty"),
])
def test_judge_verdicts_are_yes_or_no_or_counted(text, structured_reply, verdict, failure):
    answer = structured.extract(ChatReply(text, "stop"), JUDGE_REPLY, structured=structured_reply)
    assert (answer.value, answer.failure) == (verdict, failure)


def test_each_backend_kind_gets_its_own_request_shape_with_a_minimal_schema():
    schema = {"type": "object", "properties": {"improved_text": {"type": "string"}},
              "required": ["improved_text"], "additionalProperties": False}
    def shape(kind: str) -> dict | None:
        return BACKENDS[kind].response_format(IMPROVED_REPLY.field, IMPROVED_REPLY.schema())

    assert shape("local") == {"type": "json_object", "schema": schema}
    for kind in ("vllm", "sglang", "openai", "ollama"):
        assert shape(kind) == {
            "type": "json_schema", "json_schema": {"name": "improved_text", "schema": schema, "strict": True}}
    assert structured.request_format(object(), IMPROVED_REPLY) is None  # not one of our engines: tags
    assert JUDGE_REPLY.schema()["properties"] == {"verdict": {"type": "string", "enum": ["Yes", "No"]}}


def test_requests_show_no_placeholder_to_copy():
    for structured_reply in (True, False):
        instruction = IMPROVED_REPLY.instruction(structured_reply)
        assert "the complete edited text" not in instruction and "..." not in instruction
    assert "<IMPROVED_VARIABLE>" not in IMPROVED_REPLY.instruction(True)
    assert '"improved_text"' in IMPROVED_REPLY.instruction(True)


def test_optimizer_request_carries_role_value_feedback_and_constraints():
    engine = ScriptedEngine()
    variable = tg.Variable("current prompt text", "system prompt of the solver")
    variable.gradients.append(tg.Variable("mention units", "feedback", requires_grad=False))
    request = tg.TGD([variable], engine=engine, constraints=["Keep the last line."]).build_request(variable)
    for part in ("system prompt of the solver", "current prompt text", "mention units", "Keep the last line."):
        assert part in request


def test_text_loss_feedback_is_its_evaluation():
    engine = ScriptedEngine(answer=lambda q, s: "Too vague." if s == "Judge it." else "x")
    answer = tg.Variable("some answer", "answer to improve")
    loss = tg.TextLoss("Judge it.", engine)(answer)
    loss.backward(engine)
    assert [g.value for g in answer.gradients] == ["Too vague."]
    tg.set_backward_engine(engine)
    assert tg.get_backward_engine() is engine


def test_forward_backward_tgd_on_real_bbh_examples_with_the_real_server(shared_data, local_engine_url):
    examples = json.loads((shared_data / "bbh" / "object_counting.json").read_text())["examples"][:3]
    pairs = [(e["input"], e["target"]) for e in examples]
    engine = get_engine("local")

    def one_step():
        prompt, total = build_step(engine, pairs)
        total.backward(engine)
        optimizer = tg.TGD([prompt], engine=engine, max_tokens=64)
        optimizer.reply = INSTRUCTIONS_REPLY
        optimizer.step()
        return prompt, optimizer

    prompt, optimizer = one_step()
    stats = engine.stats.as_dict()
    assert len(prompt.gradients) == 3 and all(g.value.strip() for g in prompt.gradients)
    assert stats["calls"] == 3 + 3 + 1  # forward, feedback, optimizer
    assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0
    # A structured reply: SmolLM2 rarely writes tags, but under the server's JSON grammar it returns a prompt.
    assert optimizer.failures == [None] and optimizer.updated == [True]
    assert set(json.loads(optimizer.last_replies[0], strict=False)) == {"instructions"}  # raw newlines pass the grammar
    assert len(prompt.value.split()) >= 3 and "{" not in prompt.value

    again, _ = one_step()
    after = engine.stats.as_dict()
    assert after["calls"] == stats["calls"]  # every request of the identical step came from the cache
    assert after["cache_hits"] - stats["cache_hits"] == 7
    assert again.value == prompt.value
