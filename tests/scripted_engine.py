"""An in-process stand-in for a chat model, for fast tests of the training logic (never the only test).

It recognises our own request kinds by their system prompts and answers in the formats the
pipeline expects, so tests can count calls of each kind and steer what the optimizer returns.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from textgrad import prompts
from textgrad.serving.stats import EngineStats
from utils.federated.aggregation import MERGE_SYSTEM
from utils.tasks.evaluation import JUDGE_SYSTEM

_CURRENT = re.compile(r"\nCurrent [^\n]*:\n(.*)\n\n", re.DOTALL)  # up to the last paragraph, the reply format


class ScriptedEngine:
    def __init__(self, name: str = "scripted", answer: Callable[[str, str | None], str] | None = None,
                 improve: Callable[[str], str | None] | None = None) -> None:
        self.name = name
        self.model = name
        self.stats = EngineStats()
        self.calls: list[tuple[str, str | None, str]] = []  # (kind, system prompt, user prompt)
        self._answer = answer or (lambda question, system: "I think the Answer: 0")
        # improve(current_prompt) -> new prompt text, or None for a reply without tags
        self._improve = improve or (lambda current: current.strip() + " Count carefully.")
        self._lock = threading.Lock()

    def kind_of(self, system: str | None) -> str:
        return {prompts.FEEDBACK_SYSTEM: "feedback", prompts.OPTIMIZER_SYSTEM: "optimizer",
                MERGE_SYSTEM: "merge", JUDGE_SYSTEM: "judge"}.get(system or "", "answer")

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.calls if k == kind)

    def generate(self, prompt: str, system_prompt: str | None = None, *, temperature: float = 0.0,
                 max_tokens: int = 512) -> str:
        kind = self.kind_of(system_prompt)
        with self._lock:
            self.calls.append((kind, system_prompt, prompt))
        self.stats.calls += 1
        if kind == "feedback":
            return "Tell the model to count every item one by one."
        if kind == "optimizer":
            new = self._improve(_CURRENT.search(prompt).group(1))
            return "no tags here" if new is None else f"<IMPROVED_VARIABLE>\n{new}\n</IMPROVED_VARIABLE>"
        if kind == "merge":
            parts = re.findall(r"<PROMPT>\n(.*?)\n</PROMPT>", prompt, re.DOTALL)
            return f"<MERGED_PROMPT>\nMERGED({len(parts)}) {parts[0]}\n</MERGED_PROMPT>"
        if kind == "judge":
            return "Yes"
        return self._answer(prompt, system_prompt)

    __call__ = generate

    def chat(self, messages: list[dict], **kwargs: object) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        return self.generate(messages[-1]["content"], system, **kwargs)

    def check_available(self) -> None:
        return None
