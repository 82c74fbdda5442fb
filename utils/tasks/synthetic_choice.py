"""Offline, seeded generators of BBH-style questions whose answer is shown in the question.

They sit beside utils.tasks.synthetic (counting, sorting, arithmetic) and are registered through it. The
answer is always something the question holds: an option letter of its ``Options:`` list (answer kind
multiple_choice), Yes or No (binary), or one word of the question (word). Little knowledge is needed, so
how the model is told to read and answer matters; docs/quickstart.md has the embedded 135M model's
accuracy on each. The word lists are our own.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

from utils.tasks.registry import Example

# Everyday nouns per category, each an unambiguous member of its category and of no other.
_MEMBERS: dict[str, list[str]] = {
    "fruits": ["apple", "banana", "grape", "peach", "pear", "plum", "cherry", "lemon", "mango", "kiwi"],
    "vegetables": ["carrot", "potato", "onion", "cabbage", "spinach", "broccoli", "pea", "turnip", "leek", "garlic"],
    "animals": ["dog", "horse", "lion", "rabbit", "elephant", "tiger", "sheep", "fox", "bear", "donkey"],
    "musical instruments": ["violin", "guitar", "flute", "trumpet", "harp", "drum", "piano", "cello", "banjo", "tuba"],
    "pieces of furniture": ["chair", "table", "sofa", "bed", "desk", "wardrobe", "stool", "bookcase", "couch",
                            "cupboard"],
    "tools": ["hammer", "saw", "wrench", "screwdriver", "drill", "chisel", "shovel", "rake", "mallet", "axe"],
    "vehicles": ["bus", "truck", "bicycle", "train", "car", "boat", "tractor", "scooter", "van", "taxi"],
    "pieces of clothing": ["shirt", "coat", "sock", "scarf", "glove", "jacket", "skirt", "sweater", "hat", "dress"],
}
# Lower-case words of everyday English for the questions about word order, spread over the alphabet.
_WORDS = sorted(set("""
    able acid actor adult agent album alarm angle ankle apple arrow atlas autumn badge baker basket beach
    blade blanket bottle bread bridge bucket button cable camera carpet castle chain chalk cloud coffee
    collar cotton dance desert diary dinner dolphin dragon drawer eagle earth echo elbow engine entry
    fabric falcon feather fever field finger forest fruit galaxy garden giant glass globe guitar habit
    hammer harbor helmet honey hunter island ivory jacket jelly jewel journey jungle kettle kidney kitchen
    kitten knight ladder lamp lemon letter lizard magnet market meadow mirror monkey mountain napkin needle
    nephew noodle number ocean office onion orbit oyster palace parrot pencil pepper pillow planet quarry
    queen quilt quiver rabbit radio ribbon river rocket saddle salad shadow silver spider sugar table
    tailor ticket tiger tunnel umbrella uncle unicorn urchin valley velvet village violin wagon walnut
    window winter yacht yard yellow yogurt zebra zero zipper zone
""".split()))
# The word a question uses for one member of a category ("Is a harp a musical instrument?").
_ONE_OF: dict[str, str] = {
    "vegetables": "a vegetable", "fruits": "a fruit", "musical instruments": "a musical instrument",
    "animals": "an animal", "pieces of furniture": "a piece of furniture", "tools": "a tool",
    "vehicles": "a vehicle", "pieces of clothing": "a piece of clothing",
}


def _options(items: list[str]) -> str:
    return "Options:\n" + "\n".join(f"({letter}) {item}" for letter, item in zip(string.ascii_uppercase, items,
                                                                                  strict=False))


def _choice(question: str, items: list[str], answer: str) -> Example:
    """A question with its lettered options; the target is the letter of `answer`, as in BBH: "(B)"."""
    letter = string.ascii_uppercase[items.index(answer)]
    return Example(question=f"{question}\n{_options(items)}", target=f"({letter})")


def _odd_one_out(rng: random.Random) -> Example:
    common, odd = rng.sample(list(_MEMBERS), 2)
    answer = rng.choice(_MEMBERS[odd])
    items = [*rng.sample(_MEMBERS[common], 3), answer]
    rng.shuffle(items)
    return _choice("Which item does not belong with the others?", items, answer)


def _category_member(rng: random.Random) -> Example:
    categories = rng.sample(list(_MEMBERS), 3)
    items = [rng.choice(_MEMBERS[category]) for category in categories]
    answer = items[0]
    rng.shuffle(items)
    return _choice(f"Which of the following is {_ONE_OF[categories[0]]}?", items, answer)


def _category_yes_no(rng: random.Random) -> Example:
    asked, other = rng.sample(list(_MEMBERS), 2)
    belongs = rng.random() < 0.5
    item = rng.choice(_MEMBERS[asked if belongs else other])
    article = "an" if item[0] in "aeiou" else "a"
    # Three wordings, so the pool holds enough distinct Yes questions to stay balanced.
    question = rng.choice((f"Is {article} {item} {_ONE_OF[asked]}?",
                           f"Is {article} {item} one of the {asked}?",
                           f"Would you call {article} {item} {_ONE_OF[asked]}?"))
    return Example(question=question, target="Yes" if belongs else "No")


_BY_FIRST_LETTER: dict[str, list[str]] = {}
for _word in _WORDS:
    _BY_FIRST_LETTER.setdefault(_word[0], []).append(_word)


def _words_of_distinct_letters(rng: random.Random, count: int) -> list[str]:
    """Words with distinct first letters: the first letter alone decides their order, a strategy an
    instruction can name."""
    return [rng.choice(_BY_FIRST_LETTER[letter]) for letter in rng.sample(sorted(_BY_FIRST_LETTER), count)]


_ALPHABETICAL_FIRST = "Which of these words comes first in alphabetical order"


def _alphabetical_first(rng: random.Random) -> Example:
    items = _words_of_distinct_letters(rng, 3)
    return _choice(f"{_ALPHABETICAL_FIRST}?", items, min(items))


def _alphabetical_first_word(rng: random.Random) -> Example:
    items = _words_of_distinct_letters(rng, 3)
    return Example(question=f"{_ALPHABETICAL_FIRST}: {', '.join(items)}?", target=min(items))


def _next_in_list(rng: random.Random) -> Example:
    words = rng.sample(_WORDS, 5)
    asked = rng.randrange(len(words) - 1)
    answer = words[asked + 1]
    options = [answer, *rng.sample([w for w in words if w not in (words[asked], answer)], 2)]
    rng.shuffle(options)
    question = f"List: {', '.join(words)}. Which word comes right after {words[asked]} in the list?"
    return _choice(question, options, answer)


def _first_last_word(rng: random.Random) -> Example:
    words = rng.sample(_WORDS, 4)
    which = rng.choice(("first", "last"))
    answer = words[0] if which == "first" else words[-1]
    return Example(question=f"List: {', '.join(words)}. What is the {which} word of the list?", target=answer)


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "synthetic_odd_one_out": _odd_one_out,
    "synthetic_category_member": _category_member,
    "synthetic_category_yes_no": _category_yes_no,
    "synthetic_alphabetical_first": _alphabetical_first,
    "synthetic_alphabetical_first_word": _alphabetical_first_word,
    "synthetic_next_in_list": _next_in_list,
    "synthetic_first_last_word": _first_last_word,
}
