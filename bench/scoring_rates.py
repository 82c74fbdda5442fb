"""How often the scorer accepts a right answer and rejects a wrong one, per answer type.

    python bench/scoring_rates.py [--data_dir ../shared/data] [--per_subtask]

Every example of the 27 BBH subtasks (and GSM8K's test split) is answered in the phrasings real
models write (BBH's own "So the answer is (B).", an `Answer:` line, Markdown, lists, equations,
reasoning that mentions another value first, ...): once with its gold answer, which must score 1,
and once with another example's different answer, which must score 0. The reasoning of each reply
mentions the other answer along the way, so a scorer that reads values before the final statement
fails both ways. tests/test_scoring_rates.py runs the same replies on a sample of every subtask.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from utils.tasks.choice import parse_options  # noqa: E402
from utils.tasks.registry import TaskSpec, resolve_task  # noqa: E402
from utils.tasks.scoring import score_response  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Case:
    """One real example: its question, gold target and another example's different answer."""

    task: TaskSpec
    question: str
    target: str
    wrong: str


# ---------------------------------------------------------------- how replies are phrased

# Each template writes a reply from the answer it states and a distractor it mentions on the way.
Template = Callable[[str, str], str]
TEMPLATES: tuple[Template, ...] = (
    lambda answer, other: f"Answer: {answer}",
    lambda answer, other: (f"Let's think step by step.\nAt first {other} looked plausible, but it does not "
                           f"hold up.\nSo the answer is {answer}."),
    lambda answer, other: f"**Answer:** {answer}",
    lambda answer, other: f"The answer is {answer}.",
    lambda answer, other: answer,
    lambda answer, other: f"Final answer: {answer}",
    lambda answer, other: f"Step 1: check {other}.\nStep 2: it fails, so look again.\n\nAnswer:\n{answer}",
    lambda answer, other: f"Answer: {answer}\n\nExplanation: {other} was considered and rejected.",
    lambda answer, other: f"I compared the choices and {other} is not it. Therefore, the final answer is {answer}",
    lambda answer, other: f"Answer: {other}\nWait, that is not right; let me re-check.\nAnswer: {answer}",
    lambda answer, other: f"After weighing {other} against the rest, I conclude.\n**Answer: {answer}**",
    lambda answer, other: f"So, the correct answer is: {answer}",
    lambda answer, other: f"ANSWER: {answer}\n",
    lambda answer, other: f"Final Answer: The final answer is {answer}. I hope it is correct.",
)
# Only for answers that are one value (an option, a word, a number), where "X, not Y" reads naturally.
VALUE_TEMPLATES: tuple[Template, ...] = (
    lambda answer, other: f"The answer is {answer}, not {other}.",
    lambda answer, other: f"Answer: {answer}. {other} would contradict the question.",
)
# Templates that every answer form goes through (the others take the canonical form only).
FORM_TEMPLATES = TEMPLATES[:2]


def _numeric_forms(value: str) -> list[str]:
    number = Decimal(value.replace(",", ""))
    grouped = f"{number:,}"
    forms = [value, grouped, f"{grouped}.00", f"{number}.0", f"{grouped} in total",
             f"{number - 2} + 2 = {number}", f"{number} (counting each one once)"]
    if number >= 0:
        forms.append(f"${grouped}")
    else:
        forms.append(f"\u2212{-number}")
    return forms


def _option_forms(letter: str, options: dict[str, str]) -> list[str]:
    text = options.get(letter, "")
    forms = [f"({letter})", letter, f"Option {letter}", f"{letter.lower()})", f"option ({letter})"]
    if text:
        forms += [f"({letter}) {text}", f"{letter}) {text}"]
    if text and [t.casefold() for t in options.values()].count(text.casefold()) == 1:
        forms.append(text)  # a text shared by two options names neither
    return forms


def _run_spelling(answer: str, options: dict[str, str]) -> list[str]:
    """The consecutive options whose texts, joined by ", ", spell an option-text target."""
    letters = sorted(options)
    for first in range(len(letters)):
        for last in range(first, len(letters)):
            if ", ".join(options[k] for k in letters[first:last + 1]).casefold() == answer.casefold():
                return letters[first:last + 1]
    return []


def _multiple_choice_forms(answer: str, options: dict[str, str]) -> list[str]:
    if answer.startswith("(") and answer.endswith(")"):
        return _option_forms(answer[1:-1], options)
    # An option-text target ("Monsters, Inc" listed as "(A) Monsters", "(B) Inc"): its text, and
    # the first option of the run that spells it.
    run = _run_spelling(answer, options)
    return [answer, f"{answer}."] + ([f"({run[0]})", f"({run[0]}) {options[run[0]]}"] if run else [])


_NEGATED = {"invalid": "not valid", "valid": "not invalid", "false": "not True", "true": "not False"}


def _binary_forms(answer: str, question: str) -> list[str]:
    word = answer.strip()
    forms = [word, word.lower(), word.upper(), f"{word}.", word.capitalize()]
    if word.lower() in _NEGATED:
        forms.append(_NEGATED[word.lower()])
    if word.lower() in ("yes", "no"):
        forms.append(f"{word.capitalize()}, it {'is' if word.lower() == 'yes' else 'is not'}.")
    if question.rstrip().endswith(" is") and word.lower() in ("true", "false"):
        forms.append(f"{question.rstrip()} {word}")  # "not ( True ) and ( True ) is False"
    return forms


def _word_sort_forms(answer: str) -> list[str]:
    words = answer.split()
    return [answer, ", ".join(words), " ".join(w.capitalize() for w in words), "\n".join(words),
            "\n".join(f"{i}. {w}" for i, w in enumerate(words, start=1)), "\n".join(f"- {w}" for w in words),
            f"[{', '.join(words)}]", f"{', '.join(words[:-1])}, and {words[-1]}" if len(words) > 1 else answer]


def _bracket_forms(answer: str) -> list[str]:
    return [answer, answer.replace(" ", ""), f"`{answer}`", f" {answer} ", f"{answer} (closing what is still open)"]


def answer_forms(task: TaskSpec, answer: str, question: str) -> list[str]:
    """The ways a reply writes one answer value; the first is the canonical one."""
    if task.kind == "numeric":
        return _numeric_forms(answer)
    if task.kind == "multiple_choice":
        return _multiple_choice_forms(answer, parse_options(question))
    if task.kind == "binary":
        return _binary_forms(answer, question)
    if task.kind == "word_sort":
        return _word_sort_forms(answer)
    if task.kind == "brackets":
        return _bracket_forms(answer)
    return [answer]


def replies(task: TaskSpec, answer: str, other: str, question: str) -> list[str]:
    """Replies stating answer, each mentioning other along the way (or after the statement)."""
    forms = answer_forms(task, answer, question)
    distractor = answer_forms(task, other, question)[0]
    out = [template(forms[0], distractor) for template in TEMPLATES]
    if task.kind in ("numeric", "multiple_choice", "binary"):
        out += [template(forms[0], distractor) for template in VALUE_TEMPLATES]
    if task.kind == "numeric":
        out.append(f"She pays {distractor} first and then the rest.\n#### {answer}")
        out.append(f"Adding {distractor} was a mistake.\nThe final answer is $\\boxed{{{answer}}}$.")
    out += [template(form, distractor) for form in forms[1:] for template in FORM_TEMPLATES]
    return out


# ---------------------------------------------------------------- real examples


def _other_answer(task: TaskSpec, index: int, targets: list[str], question: str) -> str | None:
    """The next example's target that differs from this one (and is an option of this question)."""
    gold = targets[index]
    options = parse_options(question)
    for step in range(1, len(targets)):
        other = targets[(index + step) % len(targets)]
        if other.casefold() == gold.casefold():
            continue
        if task.kind == "multiple_choice":
            letter = other[1:-1] if other.startswith("(") else None
            if letter not in options or options.get(letter, "").casefold() in gold.casefold():
                continue
        return other
    return None


def bbh_cases(data_dir: Path, subtask: str) -> list[Case]:
    task = resolve_task(f"BBH_{subtask}")
    examples = json.loads((data_dir / "bbh" / f"{subtask}.json").read_text())["examples"]
    targets = [e["target"].strip() for e in examples]
    cases = []
    for index, example in enumerate(examples):
        wrong = _other_answer(task, index, targets, example["input"])
        if wrong is not None:
            cases.append(Case(task, example["input"], targets[index], wrong))
    return cases


def gsm8k_cases(data_dir: Path) -> list[Case]:
    task = resolve_task("GSM8K")
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines() if line.strip()]
    targets = [row["answer"].rsplit("####", 1)[1].strip() for row in rows]
    return [Case(task, row["question"], targets[i], _other_answer(task, i, targets, row["question"]) or "0")
            for i, row in enumerate(rows)]


def bbh_subtasks(data_dir: Path) -> list[str]:
    return sorted(p.stem for p in (data_dir / "bbh").glob("*.json"))


@dataclass
class Tally:
    right: int = 0
    accepted: int = 0
    wrong: int = 0
    false_accepted: int = 0


def outcomes(case: Case) -> Iterator[tuple[str, str, int, int]]:
    """(reply, answer it states, expected score, score) for the gold and the wrong replies of a case."""
    for answer, other, expected in ((case.target, case.wrong, 1), (case.wrong, case.target, 0)):
        for reply in replies(case.task, answer, other, case.question):
            yield reply, answer, expected, score_response(case.task, reply, case.target, question=case.question)


def misreadings(case: Case) -> Iterator[tuple[str, str, int]]:
    """(reply, answer it states, expected score) for every reply of a case that scores otherwise."""
    return ((reply, answer, expected) for reply, answer, expected, got in outcomes(case) if got != expected)


def tally(cases: list[Case]) -> Tally:
    result = Tally()
    for case in cases:
        for _, _, expected, got in outcomes(case):
            if expected:
                result.right += 1
                result.accepted += got
            else:
                result.wrong += 1
                result.false_accepted += got
    return result


def _total(tallies: list[Tally]) -> Tally:
    return Tally(**{f.name: sum(getattr(t, f.name) for t in tallies) for f in fields(Tally)})


def _row(name: str, examples: int, t: Tally) -> str:
    return (f"{name:<40} {examples:>8} {t.right:>13} {t.accepted / t.right:>9.2%} {t.wrong:>13} "
            f"{t.false_accepted / t.wrong:>13.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per_subtask", action="store_true", help="also print one row per subtask")
    parser.add_argument("--show", type=int, default=0, help="print up to N misread replies")
    args = parser.parse_args()

    started = time.perf_counter()
    subtasks = {name: bbh_cases(args.data_dir, name) for name in bbh_subtasks(args.data_dir)}
    tallies = {name: tally(cases) for name, cases in subtasks.items()}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, cases in subtasks.items():
        groups[cases[0].task.kind].append(name)
    gsm8k = gsm8k_cases(args.data_dir)

    print(f"{'answer type':<40} {'examples':>8} {'right replies':>13} {'accepted':>9} "
          f"{'wrong replies':>13} {'false accepts':>13}")
    for kind, names in groups.items():
        total = _total([tallies[n] for n in names])
        print(_row(f"{kind} ({len(names)} subtasks)", sum(len(subtasks[n]) for n in names), total))
    print(_row("GSM8K (numeric)", len(gsm8k), tally(gsm8k)))
    if args.per_subtask:
        print()
        for name, t in tallies.items():
            print(_row(name, len(subtasks[name]), t))
    misread = (f"\n[{case.task.name}] target {case.target!r}, reply states {answer!r}, expected {expected}:\n{reply}"
               for cases in [*subtasks.values(), gsm8k] for case in cases
               for reply, answer, expected in misreadings(case))
    for line in itertools.islice(misread, args.show):
        print(line)
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
