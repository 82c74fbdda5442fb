"""What a run's LLM replies decide and its plan cannot know: which steps gave no usable prompt, which new
prompts were dropped, which round's prompt validated best, and the texts the prompts came out as.

The a-priori estimate assumes the costlier outcome of each (Outcomes()); given the outcomes a finished
run recorded (Outcomes.from_run), the estimate counts that run's requests exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Outcomes:
    """The decisions the model's replies make. Steps are (client id, round, step) with step from 0."""

    unusable_steps: frozenset[tuple[str, int, int]] = frozenset()  # the optimizer reply gave no usable prompt
    reverted_steps: frozenset[tuple[str, int, int]] = frozenset()  # the new prompt scored lower and was dropped
    best_round: int | None = None  # round whose aggregate validated best (0: the starting prompt); None: the last
    # (round, client id or "global") -> the text a client returned / the aggregate. Two prompts of equal
    # text share their requests (a merge that returns one of its inputs, an edit that changes nothing).
    texts: dict[tuple[int, str], str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run_dir: Path) -> Outcomes:
        """The decisions a finished run recorded in events.jsonl, results.json and prompts/."""
        unusable, reverted = set(), set()
        for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("type") != "step":
                continue
            step = (event["client"], event["round"], event["step"])
            if event["new_batch_accuracy"] is None:
                unusable.add(step)
            elif not event["accepted"]:
                reverted.add(step)
        best = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))["best"]["round"]
        texts = {}
        for path in (run_dir / "prompts").glob("round_*/*.txt"):
            name = path.stem.removeprefix("client_")
            texts[(int(path.parent.name.removeprefix("round_")), name)] = path.read_text(encoding="utf-8")[:-1]
        return cls(frozenset(unusable), frozenset(reverted), best, texts)
