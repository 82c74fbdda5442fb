"""Settings with two flag names: --rounds, and --max_epochs as the reference code calls it.

Either name may be given, on the command line or as a config key; both in one place with different values
is an error (utils.config words it and exits with code 2). The command line still overrides a config file.
"""

from __future__ import annotations

import argparse
from typing import Any

# Where Aliased records the names a setting was given under (dest -> {name: value}); taken out of the
# namespace by names_problem before it becomes a RunConfig.
NAMES_GIVEN = "_names_given"


class Aliased(argparse._StoreAction):
    """A store action that records the name it was given under and the value."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        vars(namespace).setdefault(NAMES_GIVEN, {}).setdefault(self.dest, {})[option_string] = values


def names_problem(namespace: argparse.Namespace, source: str | None) -> str | None:
    """Takes the recorded names out of namespace; with a source ("the command line"), says what is wrong
    when one setting was given under two names with different values."""
    for names in vars(namespace).pop(NAMES_GIVEN, {}).values():
        if source is not None and len(set(names.values())) > 1:
            given = " and ".join(f"{name} {value}" for name, value in names.items())
            return f"{source} gives {given}: they name one setting, so give one of them"
    return None


def key_problem(seen: dict[str, tuple[str, Any]], dest: str, key: str, value: Any, source: str) -> str | None:
    """A config key's value against the keys before it (seen: dest -> the first key and value given)."""
    first_key, first_value = seen.setdefault(dest, (key, value))
    if first_key == key or first_value == value:  # the key itself (a NaN is not equal to itself)
        return None
    return f"{source} gives {first_key}: {first_value} and {key}: {value}: they name one setting, so give one of them"
