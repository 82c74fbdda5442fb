"""Task names, answer kinds and the answer-format instruction each task needs.

The format instruction is the contract between the prompt and the scorer: every
instruction asks for a last line starting with ``Answer:``, which is what
``utils.scoring.extract_answer`` looks for. Prompts that lose it score near zero,
so the training loop uses ``has_format_instruction`` / ``ensure_format_instruction``
to detect and repair that.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AnswerKind = Literal["numeric", "multiple_choice", "binary", "word_sort", "free_form"]


class TaskError(ValueError):
    """A task name or task setting the user gave cannot be used."""


# Answer words of the BBH yes/no-style subtasks, spelled the way we ask the model
# to write them (the scorer is case-insensitive, so "yes" targets still match).
_YES_NO = ("Yes", "No")
_BINARY_WORDS: dict[str, tuple[str, str]] = {
    "boolean_expressions": ("True", "False"),
    "causal_judgement": _YES_NO,
    "navigate": _YES_NO,
    "sports_understanding": _YES_NO,
    "web_of_lies": _YES_NO,
    "formal_fallacies": ("valid", "invalid"),
}

# All 27 BIG-Bench Hard subtasks and how their targets look.
BBH_SUBTASKS: dict[str, AnswerKind] = {
    "boolean_expressions": "binary",
    "causal_judgement": "binary",
    "date_understanding": "multiple_choice",
    "disambiguation_qa": "multiple_choice",
    "dyck_languages": "free_form",
    "formal_fallacies": "binary",
    "geometric_shapes": "multiple_choice",
    "hyperbaton": "multiple_choice",
    "logical_deduction_five_objects": "multiple_choice",
    "logical_deduction_seven_objects": "multiple_choice",
    "logical_deduction_three_objects": "multiple_choice",
    "movie_recommendation": "multiple_choice",
    "multistep_arithmetic_two": "numeric",
    "navigate": "binary",
    "object_counting": "numeric",
    "penguins_in_a_table": "multiple_choice",
    "reasoning_about_colored_objects": "multiple_choice",
    "ruin_names": "multiple_choice",
    "salient_translation_error_detection": "multiple_choice",
    "snarks": "multiple_choice",
    "sports_understanding": "binary",
    "temporal_sequences": "multiple_choice",
    "tracking_shuffled_objects_five_objects": "multiple_choice",
    "tracking_shuffled_objects_seven_objects": "multiple_choice",
    "tracking_shuffled_objects_three_objects": "multiple_choice",
    "web_of_lies": "binary",
    "word_sorting": "word_sort",
}

SYNTHETIC_TASKS: dict[str, AnswerKind] = {
    "synthetic_object_counting": "numeric",
    "synthetic_word_sorting": "word_sort",
    "synthetic_multistep_arithmetic": "numeric",
}

# Binary word pairs we recognise when inferring the kind of an unknown BBH subtask.
_KNOWN_PAIRS: tuple[tuple[str, str], ...] = (("True", "False"), _YES_NO, ("valid", "invalid"))

_ACCEPTED_FORMS = (
    "BBH_<subtask> (e.g. BBH_object_counting), GSM8K (alias GSM8K_DSPy), "
    + ", ".join(SYNTHETIC_TASKS)
)

_OPTION_TARGET = re.compile(r"^\([A-Za-z]\)$")
_NUMBER_TARGET = re.compile(r"^-?\d[\d,]*(\.\d+)?$")


def format_instruction_for(kind: AnswerKind, binary_words: tuple[str, str] | None = None) -> str:
    """The one-sentence instruction that fixes how the model writes its last line."""
    if kind == "numeric":
        return "Finish with a final line of the form 'Answer: <number>' containing only the number."
    if kind == "multiple_choice":
        return "Finish with a final line of the form 'Answer: (X)' where X is the letter of the chosen option."
    if kind == "binary":
        first, second = binary_words or _YES_NO
        return f"Finish with a final line that is exactly 'Answer: {first}' or 'Answer: {second}'."
    if kind == "word_sort":
        return (
            "Finish with a final line of the form 'Answer: <words>' listing the sorted words "
            "separated by single spaces."
        )
    if kind == "free_form":
        return "Finish with a final line of the form 'Answer: <answer>' containing only the final answer."
    raise TaskError(f"unknown answer kind {kind!r}; use one of numeric, multiple_choice, binary, word_sort, free_form")


@dataclass(frozen=True)
class Example:
    question: str
    target: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: str
    subtask: str | None
    kind: AnswerKind
    format_instruction: str

    def starting_prompt(self) -> str:
        """Our zero-shot system prompt; the format instruction stays the last sentence."""
        return (
            "You are a careful problem solver. Read the question closely and reason step by step, "
            "checking each intermediate result before moving on. " + self.format_instruction
        )


def _infer_kind(targets: list[str]) -> tuple[AnswerKind, tuple[str, str] | None]:
    """Guess the answer kind of an unknown BBH subtask from its targets."""
    cleaned = [t.strip() for t in targets if t and t.strip()]
    if not cleaned:
        return "free_form", None
    if all(_OPTION_TARGET.match(t) for t in cleaned):
        return "multiple_choice", None
    if all(_NUMBER_TARGET.match(t) for t in cleaned):
        return "numeric", None
    seen = {t.casefold() for t in cleaned}
    for pair in _KNOWN_PAIRS:
        if seen <= {w.casefold() for w in pair}:
            return "binary", pair
    return "free_form", None


def _bbh_spec(subtask: str, kind_hint_targets: list[str] | None) -> TaskSpec:
    if subtask in BBH_SUBTASKS:
        kind = BBH_SUBTASKS[subtask]
        words = _BINARY_WORDS.get(subtask)
    else:
        kind, words = _infer_kind(kind_hint_targets or [])
    return TaskSpec(
        name=f"BBH_{subtask}",
        source="bbh",
        subtask=subtask,
        kind=kind,
        format_instruction=format_instruction_for(kind, words),
    )


def resolve_task(name: str, kind_hint_targets: list[str] | None = None) -> TaskSpec:
    """Turn a ``--task`` value into a TaskSpec, or fail with a TaskError listing valid names."""
    raw = (name or "").strip()
    lowered = raw.lower()
    if lowered in ("gsm8k", "gsm8k_dspy"):
        return TaskSpec("GSM8K", "gsm8k", None, "numeric", format_instruction_for("numeric"))
    if lowered in SYNTHETIC_TASKS:
        kind = SYNTHETIC_TASKS[lowered]
        return TaskSpec(lowered, "synthetic", None, kind, format_instruction_for(kind))
    if lowered.startswith("bbh_"):
        # Hub configs and file names of BBH subtasks are lower-case identifiers.
        subtask = lowered[len("bbh_"):]
        if re.fullmatch(r"[a-z0-9_]+", subtask):
            return _bbh_spec(subtask, kind_hint_targets)
    raise TaskError(f"unknown task {name!r}; use one of: {_ACCEPTED_FORMS}")


def check_bbh_subtask(name: str, data_dir: str | None) -> None:
    """A BBH task must name one of the 27 subtasks or a `<subtask>.json` of --data_dir (or its bbh/): a typo
    is rejected at once, naming the closest subtask, instead of after the hub's retries."""
    spec = resolve_task(name)
    if spec.source != "bbh" or spec.subtask in BBH_SUBTASKS:
        return
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if any((folder / f"{spec.subtask}.json").is_file() for folder in (root, root / "bbh")):
            return
    closest = difflib.get_close_matches(spec.subtask or "", list(BBH_SUBTASKS), n=1, cutoff=0.0)
    where = f"nor a file {spec.subtask}.json in --data_dir {data_dir}" if data_dir else "and no --data_dir holds it"
    raise TaskError(f"--task {name}: {spec.subtask!r} is not one of the 27 BBH subtasks {where}; "
                    f"did you mean BBH_{closest[0]}?")


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def has_format_instruction(prompt: str, task: TaskSpec) -> bool:
    """True if the prompt still contains the task's format instruction (ignoring case and spacing)."""
    return _squash(task.format_instruction) in _squash(prompt or "")


def ensure_format_instruction(prompt: str, tasks: list[TaskSpec]) -> str:
    """Append each task's missing format instruction as a new last line; a no-op when none is missing."""
    result = prompt or ""
    for task in tasks:
        if has_format_instruction(result, task):
            continue
        result = f"{result.rstrip()}\n{task.format_instruction}" if result.strip() else task.format_instruction
    return result
