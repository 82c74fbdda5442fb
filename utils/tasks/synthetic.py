"""Offline, seeded generators of BBH-style examples.

They let the quickstart and the tests run without any download. The wording
mimics BBH so a prompt trained here transfers, but every word list is our own.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from utils.tasks.registry import Example, TaskError
from utils.tasks.synthetic_choice import GENERATORS as CHOICE_GENERATORS

# (singular, plural) pairs; each category's items are unambiguous members of it.
_CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "vegetables": [
        ("carrot", "carrots"), ("potato", "potatoes"), ("onion", "onions"), ("cabbage", "cabbages"),
        ("turnip", "turnips"), ("radish", "radishes"), ("beet", "beets"), ("leek", "leeks"),
        ("parsnip", "parsnips"), ("celery stalk", "celery stalks"), ("head of lettuce", "heads of lettuce"),
        ("yam", "yams"),
    ],
    "fruits": [
        ("apple", "apples"), ("pear", "pears"), ("banana", "bananas"), ("cherry", "cherries"),
        ("mango", "mangoes"), ("lemon", "lemons"), ("lime", "limes"), ("plum", "plums"),
        ("apricot", "apricots"), ("fig", "figs"), ("melon", "melons"), ("orange", "oranges"),
    ],
    "musical instruments": [
        ("violin", "violins"), ("cello", "cellos"), ("flute", "flutes"), ("trumpet", "trumpets"),
        ("harp", "harps"), ("banjo", "banjos"), ("drum", "drums"), ("oboe", "oboes"),
        ("tuba", "tubas"), ("saxophone", "saxophones"), ("piano", "pianos"), ("accordion", "accordions"),
    ],
    "animals": [
        ("dog", "dogs"), ("cat", "cats"), ("rabbit", "rabbits"), ("goat", "goats"), ("pig", "pigs"),
        ("cow", "cows"), ("duck", "ducks"), ("horse", "horses"), ("snail", "snails"), ("frog", "frogs"),
        ("mouse", "mice"), ("owl", "owls"),
    ],
    "pieces of furniture": [
        ("chair", "chairs"), ("table", "tables"), ("sofa", "sofas"), ("desk", "desks"), ("bed", "beds"),
        ("bookshelf", "bookshelves"), ("stool", "stools"), ("dresser", "dressers"),
        ("wardrobe", "wardrobes"), ("bench", "benches"), ("armchair", "armchairs"), ("ottoman", "ottomans"),
    ],
}

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five"]

# Lower-case, distinct, and deliberately mixed in first letters and shared prefixes
# (e.g. "bar"/"barn"/"barrel") so sorting is not trivial.
_SORT_WORDS = sorted(set("""
    acorn alder almond anchor anvil apron arbor arch attic avenue badge bar barn barrel basil beacon
    bramble breeze brook buckle cabin camel candle canyon carbon cedar chalk cherry cider clover cobalt
    comet copper coral cotton crane crater crimson dagger daisy delta denim dune eagle easel ember
    emerald engine falcon fennel fern ferry fiddle flint fossil gable garnet geyser ginger glacier
    granite gravel harbor hazel heron hollow ivory jasmine jetty juniper kettle kiln lagoon lantern
    larch ledger lemon linen lotus magnet mango maple marble meadow mesa mint mosaic nectar nickel
    nutmeg oasis oatmeal olive onyx orchard otter paddle pebble pepper pine plaza prairie quartz quill
    quince radish raven reef ribbon ridge saddle saffron sapphire satin scarlet shale sherbet silver
    sparrow spruce summit tangle thicket thistle timber topaz tulip tundra umber valley velvet violet
    walnut willow wren yarrow yew zephyr zinc
""".split()))


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join_items(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    if len(items) == 2:
        return f"{items[0]} and {items[1]}"
    return ", ".join(items[:-1]) + f", and {items[-1]}"


def _describe(rng: random.Random, singular: str, plural: str) -> tuple[str, int]:
    # Mostly single items with the occasional "three plums", as in BBH.
    n = rng.choice((1, 1, 1, 2, 3, 4))
    return (_with_article(singular) if n == 1 else f"{_NUMBER_WORDS[n]} {plural}"), n


def _object_counting(rng: random.Random) -> Example:
    categories = list(_CATEGORIES)
    asked = rng.choice(categories)
    distractor_pool = [pair for c in categories if c != asked for pair in _CATEGORIES[c]]
    asked_items = [_describe(rng, s, p) for s, p in rng.sample(_CATEGORIES[asked], rng.randint(1, 6))]
    distractors = [_describe(rng, s, p) for s, p in rng.sample(distractor_pool, rng.randint(0, 5))]
    listing = [text for text, _ in asked_items + distractors]
    rng.shuffle(listing)
    total = sum(n for _, n in asked_items)
    return Example(
        question=f"I have {_join_items(listing)}. How many {asked} do I have?",
        target=str(total),
    )


def _word_sorting(rng: random.Random) -> Example:
    words = rng.sample(_SORT_WORDS, rng.randint(3, 15))
    return Example(
        question="Sort the following words alphabetically: List: " + " ".join(words),
        target=" ".join(sorted(words)),
    )


def _eval_group(numbers: list[int], ops: list[str]) -> int:
    # Usual precedence: products are folded first, then the sum of signed terms.
    terms = [numbers[0]]
    signs = [1]
    for op, value in zip(ops, numbers[1:], strict=True):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


def _render_group(numbers: list[int], ops: list[str]) -> str:
    parts = [str(numbers[0])]
    for op, value in zip(ops, numbers[1:], strict=True):
        parts.append(f"{op} {value}")
    return "(" + " ".join(parts) + ")"


def _multistep_arithmetic(rng: random.Random) -> Example:
    groups = []
    for _ in range(2):
        size = rng.randint(2, 4)
        numbers = [rng.randint(-9, 9) for _ in range(size)]
        ops = [rng.choice("+-*") for _ in range(size - 1)]
        groups.append((numbers, ops))
    outer = rng.choice("+-*")
    left, right = (_eval_group(*g) for g in groups)
    value = {"+": left + right, "-": left - right, "*": left * right}[outer]
    question = f"({_render_group(*groups[0])} {outer} {_render_group(*groups[1])}) ="
    return Example(question=question, target=str(value))


_GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "synthetic_object_counting": _object_counting,
    "synthetic_word_sorting": _word_sorting,
    "synthetic_multistep_arithmetic": _multistep_arithmetic,
    **CHOICE_GENERATORS,
}


def generate_examples(task_name: str, n: int, seed: int) -> list[Example]:
    """``n`` distinct examples of a synthetic task; the same seed always gives the same list."""
    generator = _GENERATORS.get(task_name)
    if generator is None:
        raise TaskError(f"unknown synthetic task {task_name!r}; use one of: {', '.join(_GENERATORS)}")
    if n < 0:
        raise ValueError(f"cannot generate a negative number of examples ({n})")
    rng = random.Random(f"{task_name}:{seed}")
    examples: list[Example] = []
    seen: set[str] = set()
    # Duplicates would leak between train and test, so they are redrawn; the bound
    # only guards against a request larger than the task's space of questions.
    for _ in range(max(100, 50 * n)):
        if len(examples) == n:
            break
        example = generator(rng)
        if example.question not in seen:
            seen.add(example.question)
            examples.append(example)
    if len(examples) < n:
        raise ValueError(f"could only generate {len(examples)} distinct {task_name} examples, not {n}")
    return examples
