"""Task names, answer kinds and the answer-format instruction each task needs.

The format instruction is the contract between the prompt and the scorer: every
instruction asks for a last line starting with ``Answer:``, which is what
``utils.tasks.scoring.extract_answer`` looks for. It is not part of the trained text: the
prompt that TGD edits, clients send and the server merges holds instructions only,
and every answer request is served as ``served_prompt(prompt, task)``, that text
plus the format line of the question's own task. No edit or merge can lose it, and
in a heterogeneous run each task's questions carry their own line and no other.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AnswerKind = Literal["numeric", "multiple_choice", "binary", "word_sort", "word", "brackets", "free_form"]
ANSWER_KINDS: tuple[AnswerKind, ...] = ("numeric", "multiple_choice", "binary", "word_sort", "word", "brackets",
                                        "free_form")


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
    "dyck_languages": "brackets",
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
    # utils.tasks.synthetic_choice: the answer is an option of the question, Yes/No, or one of its words.
    "synthetic_odd_one_out": "multiple_choice",
    "synthetic_category_member": "multiple_choice",
    "synthetic_category_yes_no": "binary",
    "synthetic_alphabetical_first": "multiple_choice",
    "synthetic_alphabetical_first_word": "word",
    "synthetic_next_in_list": "multiple_choice",
    "synthetic_first_last_word": "word",
}

# Binary word pairs we recognise when inferring the kind of an unknown BBH subtask.
_KNOWN_PAIRS: tuple[tuple[str, str], ...] = (("True", "False"), _YES_NO, ("valid", "invalid"))
# Those words, lower-case: an instruction names them ("Say True or False."), so they are no restated answer.
BINARY_ANSWERS = frozenset(word.casefold() for pair in _KNOWN_PAIRS for word in pair)

_ACCEPTED_FORMS = (
    "BBH_<subtask> (e.g. BBH_object_counting), GSM8K (alias GSM8K_DSPy), "
    + ", ".join(SYNTHETIC_TASKS)
)

STARTING_INSTRUCTIONS = (
    "You are a careful problem solver. Read the question closely and reason step by step, "
    "checking each intermediate result before moving on."
)


def initial_prompt_text(value: str) -> str:
    """--initial_prompt: the text itself, or @FILE for a UTF-8 file's text (an argparse type: a file that
    cannot be read, or an empty prompt, is one error line)."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise argparse.ArgumentTypeError(f"cannot read the prompt file {value[1:]!r} ({reason}): give an "
                                             "existing UTF-8 text file after @, or the prompt itself") from None
    if not text.strip():
        raise argparse.ArgumentTypeError(f"the initial prompt {value!r} is empty: give instructions to start from")
    return text.strip()

_OPTION_TARGET = re.compile(r"^\([A-Za-z]\)$")
_NUMBER_TARGET = re.compile(r"^-?\d[\d,]*(\.\d+)?$")
_CLOSING_BRACKETS = re.compile(r"^[)\]}>\s]+$")
_SORTED_WORDS = re.compile(r"^[a-z&'\s]+$")


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
    if kind == "word":
        return "Finish with a final line of the form 'Answer: <word>' containing only that one word."
    if kind == "brackets":
        return (
            "Finish with a final line of the form 'Answer: <brackets>' giving only the closing brackets "
            "that complete the sequence, in order, separated by spaces."
        )
    if kind == "free_form":
        return "Finish with a final line of the form 'Answer: <answer>' containing only the final answer."
    raise TaskError(f"unknown answer kind {kind!r}; use one of {', '.join(ANSWER_KINDS)}")


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
        """Our zero-shot instructions (the trained text: no format line, see served_prompt)."""
        return STARTING_INSTRUCTIONS


def _is_sorted_words(target: str) -> bool:
    words = target.split()
    return bool(_SORTED_WORDS.match(target)) and words == sorted(words)


def _infer_kind(targets: list[str]) -> tuple[AnswerKind, tuple[str, str] | None]:
    """Guess the answer kind of an unknown BBH subtask from its targets."""
    cleaned = [t.strip() for t in targets if t and t.strip()]
    if not cleaned:
        return "free_form", None
    # A few option-text targets (movie_recommendation has one) do not make a task free-form.
    if sum(bool(_OPTION_TARGET.match(t)) for t in cleaned) >= 0.9 * len(cleaned):
        return "multiple_choice", None
    if all(_NUMBER_TARGET.match(t) for t in cleaned):
        return "numeric", None
    seen = {t.casefold() for t in cleaned}
    for pair in _KNOWN_PAIRS:
        if seen <= {w.casefold() for w in pair}:
            return "binary", pair
    if all(_CLOSING_BRACKETS.match(t) for t in cleaned):
        return "brackets", None
    # Single words are trivially sorted; a sorting task has sequences of several words.
    if all(_is_sorted_words(t) for t in cleaned) and sum(len(t.split()) > 1 for t in cleaned) * 2 >= len(cleaned):
        return "word_sort", None
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


def with_kind_from_targets(task: TaskSpec, targets: list[str]) -> TaskSpec:
    """A BBH-format task under a name that is not one of the 27 gets its answer kind from its targets."""
    if task.source != "bbh" or task.subtask is None or task.subtask in BBH_SUBTASKS:
        return task
    return _bbh_spec(task.subtask, targets)


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


def served_prompt(prompt: str, task: TaskSpec) -> str:
    """The system prompt an answer request is sent with: the trained text, then the task's format line.

    A text that already ends with that line (an edit copied it) is served as it is, not with it twice.
    """
    text = (prompt or "").rstrip()
    if text.endswith(task.format_instruction):
        return text
    return f"{text}\n{task.format_instruction}" if text else task.format_instruction
