"""Accuracy of a prompt on a set of examples: every example answered concurrently, scored 0/1."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textgrad.engine import ChatEngine
from textgrad.parallel import run_concurrently

from .scoring import extract_answer, score_response
from .tasks import Example, TaskSpec

JUDGE_SYSTEM = "You check answers against a reference. Reply with one word: Yes or No."
JUDGE_TEMPLATE = """Reference answer: {target}

Response to check (its final answer is what counts):
{response}

Does the response's final answer mean the same as the reference answer? Reply Yes or No."""


@dataclass
class EvalResult:
    accuracy: float
    correct: list[int]
    judge_format_failures: int = 0


def judge_answer(judge: ChatEngine, response: str, target: str) -> int | None:
    """1/0 from the LLM judge, or None when its reply is neither yes nor no (counted by the caller)."""
    reply = judge.generate(JUDGE_TEMPLATE.format(target=target, response=extract_answer(response)),
                           system_prompt=JUDGE_SYSTEM, max_tokens=8)
    word = re.search(r"\b(yes|no)\b", reply or "", re.IGNORECASE)
    return None if word is None else int(word.group(1).lower() == "yes")


def score_answer(task: TaskSpec, response: str, target: str, judge: ChatEngine | None = None) -> tuple[int, bool]:
    """(score, judge_failed). The LLM judge only replaces string matching for free-form answers."""
    if judge is not None and task.kind == "free_form":
        verdict = judge_answer(judge, response, target)
        return (0, True) if verdict is None else (verdict, False)
    return score_response(task, response, target), False


def evaluate_prompt(prompt: str, examples: list[Example], task: TaskSpec, engine: ChatEngine, *,
                    max_tokens: int = 512, judge: ChatEngine | None = None) -> EvalResult:
    def answer_and_score(example: Example) -> tuple[int, bool]:
        response = engine.generate(example.question, system_prompt=prompt, max_tokens=max_tokens)
        return score_answer(task, response, example.target, judge)

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
