"""Prices of OpenAI models, in US dollars per million tokens, for the cost estimate (utils.estimate.requests).

Standard-tier list prices (no batch or cached-input discount) as OpenAI's pricing page gave them on
PRICES_DATE. Prices change: check https://platform.openai.com/docs/pricing before trusting a
figure, and give --price_in / --price_out for any model not listed or priced differently now.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_DATE = "2025-08-15"

# model name prefix -> (input, output) USD per 1M tokens. Dated snapshots such as gpt-4o-2024-08-06
# take the price of their family; the longest matching prefix wins (gpt-4o-mini before gpt-4o).
OPENAI_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float
    source: str  # where the figures come from, printed beside the cost

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


def listed_price(model: str) -> Price | None:
    """The table's price of an OpenAI model name, or None when no listed family matches."""
    name = model.strip().lower()
    matches = [prefix for prefix in OPENAI_PRICES if name == prefix or name.startswith(prefix + "-")]
    if not matches:
        return None
    prefix = max(matches, key=len)
    price_in, price_out = OPENAI_PRICES[prefix]
    return Price(price_in, price_out, f"OpenAI list price of {prefix} on {PRICES_DATE}")


def parse_price_overrides(values: list[str] | None, flag: str) -> dict[str | None, float]:
    """--price_in/--price_out values: `2.5` (every engine) or `gpt-4o=2.5` (one engine) -> {engine or None: price}.

    Raises ValueError with a one-line message naming the bad value."""
    prices: dict[str | None, float] = {}
    for value in values or []:
        engine, _, number = value.rpartition("=")
        try:
            price = float(number)
        except ValueError:
            raise ValueError(f"{flag} {value!r} is not a price: give USD per million tokens, e.g. 2.5 or "
                             "gpt-4o=2.5") from None
        if not 0 <= price < float("inf"):
            raise ValueError(f"{flag} {value!r} must be a number of USD, 0 or more")
        prices[engine.strip() or None] = price
    return prices


def engine_price(engine: str, openai_routed: bool, price_in: dict[str | None, float],
                 price_out: dict[str | None, float]) -> Price | None:
    """The price of an engine: the flags' override, else the table for engines OpenAI itself serves.

    An override needs both directions: one given alone takes the other from the table (or 0)."""
    listed = listed_price(engine) if openai_routed else None
    given_in = price_in.get(engine, price_in.get(None))
    given_out = price_out.get(engine, price_out.get(None))
    if given_in is None and given_out is None:
        return listed
    fallback = listed or Price(0.0, 0.0, "")
    return Price(given_in if given_in is not None else fallback.input_per_million,
                 given_out if given_out is not None else fallback.output_per_million,
                 "--price_in/--price_out")

