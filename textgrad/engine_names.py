"""Engine names as TextGrad users write them, mapped onto our routing table (textgrad.engine)."""

from __future__ import annotations

# TextGrad sends `experimental:<model>` to its LiteLLM-based engines. We route every name through one
# table, so the prefix selects nothing here; it must only never reach a server as part of the model id.
EXPERIMENTAL_PREFIX = "experimental:"


def canonical_engine_name(name: str) -> str:
    """`name` without TextGrad's `experimental:` prefix; any other name unchanged."""
    if isinstance(name, str) and name.startswith(EXPERIMENTAL_PREFIX):
        return name[len(EXPERIMENTAL_PREFIX):].strip()
    return name
