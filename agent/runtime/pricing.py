"""What a turn's tokens cost, in US dollars, from a price table per model.

The table holds list prices per million tokens (input, cached input, output) for the
models this service defaults to, as published by OpenAI and Google on the date below.
Prices change and contracts differ: ``MODEL_PRICES`` (JSON, same shape) overrides or
extends it, and a model in neither has no cost (``cost_usd`` is null), never a guess.

Cached input tokens are part of the input tokens the provider reports; they are
charged at the cached rate, the rest at the input rate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True, kw_only=True)
class Price:
    """US dollars per million tokens."""

    input: float
    cached_input: float
    output: float


DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o-mini": Price(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4o": Price(input=2.50, cached_input=1.25, output=10.00),
    "gpt-4.1": Price(input=2.00, cached_input=0.50, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, cached_input=0.10, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, cached_input=0.025, output=0.40),
    "google/gemini-2.5-flash": Price(input=0.30, cached_input=0.075, output=2.50),
    "google/gemini-2.5-pro": Price(input=1.25, cached_input=0.31, output=10.00),
}


class PriceTableError(ValueError):
    """``MODEL_PRICES`` is not a JSON object of prices."""


def parse_prices(raw: str | None) -> dict[str, Price]:
    """The price table: the defaults, overridden by ``raw`` (``MODEL_PRICES``), which
    maps a model name to ``{"input": .., "cached_input": .., "output": ..}``."""
    table = dict(DEFAULT_PRICES)
    if not raw:
        return table
    try:
        given = json.loads(raw)
    except ValueError:
        raise PriceTableError("MODEL_PRICES is not JSON") from None
    if not isinstance(given, dict):
        raise PriceTableError("MODEL_PRICES must be a JSON object {model: prices}")
    for model, entry in given.items():
        if not isinstance(entry, dict) or set(entry) - {"input", "cached_input", "output"}:
            raise PriceTableError(f"MODEL_PRICES[{model!r}] must hold input, cached_input, output")
        try:
            values = {k: float(entry[k]) for k in ("input", "output")}
            cached = float(entry.get("cached_input", values["input"]))
        except (KeyError, TypeError, ValueError):
            raise PriceTableError(
                f"MODEL_PRICES[{model!r}] needs numeric input and output"
            ) from None
        if min(*values.values(), cached) < 0:
            raise PriceTableError(f"MODEL_PRICES[{model!r}] has a negative price")
        table[str(model)] = Price(
            input=values["input"], cached_input=cached, output=values["output"]
        )
    return table


def cost_usd(
    table: Mapping[str, Price],
    model: str,
    *,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
) -> float | None:
    """The cost of these tokens on ``model``, or None when its price is unknown."""
    price = table.get(model)
    if price is None:
        return None
    cached = min(cached_input_tokens, input_tokens)
    dollars = (
        (input_tokens - cached) * price.input
        + cached * price.cached_input
        + output_tokens * price.output
    ) / 1_000_000
    return round(dollars, 8)
