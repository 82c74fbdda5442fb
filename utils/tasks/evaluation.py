"""Accuracy of a prompt on a set of examples: every example answered concurrently, scored 0/1."""

from __future__ import annotations

from dataclasses import dataclass

from textgrad import structured
from textgrad.engine import ChatEngine
from textgrad.errors import ContextOverflowError
from textgrad.parallel import run_concurrently
from textgrad.serving import budget
from textgrad.serving.stats import call_kind

from .answers import extract_answer
from .registry import Example, TaskSpec, served_prompt
from .scoring import score_response

JUDGE_SYSTEM = "You check answers against a reference. Your verdict is Yes or No."
JUDGE_TEMPLATE = """Reference answer: {target}

Response to check (its final answer is what counts):
{response}

Does the response's final answer mean the same as the reference answer? {reply_format}"""
JUDGE_REPLY = structured.ReplySpec(field="verdict", tag=None, what="your verdict", choices=("Yes", "No"))
# Room for the JSON object around the word ({"verdict": "Yes"} is about 8 tokens).
JUDGE_MAX_TOKENS = 16


@dataclass
class EvalResult:
    accuracy: float
    correct: list[int]
    judge_format_failures: int = 0


def judge_answer(judge: ChatEngine, response: str, target: str) -> int | None:
    """1/0 from the LLM judge, or None when its reply is neither yes nor no (counted by the caller).

    A request that cannot fit the judge's window scores 0 (counted by the engine as context_skipped).
    """
    fields = {"target": target, "response": extract_answer(response)}
    try:
        with call_kind("judge"):
            answer = structured.ask_text(judge, JUDGE_REPLY, system=JUDGE_SYSTEM, user=JUDGE_TEMPLATE, fields=fields,
                                         max_tokens=JUDGE_MAX_TOKENS)
    except ContextOverflowError:
        return 0
    return None if answer.value is None else int(answer.value == "Yes")


def score_answer(task: TaskSpec, response: str, target: str, judge: ChatEngine | None = None, *,
                 question: str | None = None) -> tuple[int, bool]:
    """(score, judge_failed): the LLM judge's verdict when there is a judge (--judge llm: every task, as the
    reference code judges its BBH tasks), else our deterministic grader.

    question lets multiple choice read an option given by its text from the question's Options: list."""
    if judge is not None:
        verdict = judge_answer(judge, response, target)
        return (0, True) if verdict is None else (verdict, False)
    return score_response(task, response, target, question=question), False


def evaluate_prompt(prompt: str, examples: list[Example], task: TaskSpec, engine: ChatEngine, *,
                    max_tokens: int = 512, judge: ChatEngine | None = None) -> EvalResult:
    """Accuracy of the trained text `prompt`, served with the task's own format line."""
    system = served_prompt(prompt, task)

    def answer_and_score(example: Example) -> tuple[int, bool]:
        try:
            with call_kind("answer"):
                response = budget.generate(engine, example.question, system_prompt=system, max_tokens=max_tokens)
        except ContextOverflowError:
            return 0, False  # skipped: scores 0, counted by the engine as context_skipped
        return score_answer(task, response, example.target, judge, question=example.question)

    scored = run_concurrently([lambda ex=ex: answer_and_score(ex) for ex in examples])
    correct = [s for s, _ in scored]
    return EvalResult(accuracy=sum(correct) / len(correct) if correct else 0.0, correct=correct,
                      judge_format_failures=sum(failed for _, failed in scored))


def evaluate_on_tasks(prompt: str, sets: dict[str, tuple[TaskSpec, list[Example]]], engine: ChatEngine, *,
                      max_tokens: int = 512, judge: ChatEngine | None = None) -> tuple[dict[str, float], int]:
    """(accuracy per task name plus their unweighted mean under "mean", judge format failures)."""
    names = list(sets)
    results = run_concurrently([
        lambda name=name: evaluate_prompt(prompt, sets[name][1], sets[name][0], engine,
                                          max_tokens=max_tokens, judge=judge)
        for name in names
    ])
    scores = {name: r.accuracy for name, r in zip(names, results, strict=True)}
    scores["mean"] = sum(scores.values()) / len(names)
    return scores, sum(r.judge_format_failures for r in results)
