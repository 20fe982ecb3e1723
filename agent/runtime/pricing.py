"""What a model call costs, in US dollars: ``MODEL_PRICES`` first, else the price table
that pydantic's ``genai-prices`` package maintains.

``genai-prices`` holds list prices per provider and model with what a hand-kept table
misses: tiers (Gemini 2.5 Pro charges every token of a prompt above 200k tokens at the
higher rate), cached-input rates, prices that change on a date (the price in force at
the call's time is used), and model-id matching (a dated snapshot such as
``gpt-4o-mini-2024-07-18`` is priced as its model). Its data ships inside the wheel:
this module reads the bundled snapshot of the locked version, never
``genai_prices.get_snapshot()``, which an ``UpdatePrices`` started by any other code in
the process could replace with prices fetched over the network. Prices move when the
lock moves, and every change is a reviewed diff.

Which provider's list applies: a ``provider/model`` name names it when ``provider`` is
one ``genai-prices`` knows (``google/gemini-3.8-flash``, Vertex AI's spelling), else the
endpoint the service calls (``OPENAI_BASE_URL``, Vertex AI's URL) when ``genai-prices``
recognises it, else OpenAI when no base URL is set (the SDK's default endpoint). A model
on an endpoint it does not know (Ollama on loopback, a private vLLM) has no price: a
vendor's list price for a self-hosted model would be a guess.

``MODEL_PRICES`` (JSON ``{"model": {"input": .., "cached_input": .., "output": ..}}``,
US dollars per million tokens, flat) overrides or adds a model by its exact name: a
negotiated contract, a self-hosted model's internal rate, a model newer than the lock. A
model in neither has no cost (``cost_usd`` is None), never a guess.

Tiers apply per model call, so price each call (``cost_usd`` once per call, or
``calls_cost_usd`` over the SDK's per-request usage entries), not a turn's sum.
Cached input tokens are part of the input tokens a provider reports; they are charged at
the cached rate, the rest at the input rate.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from importlib.metadata import version

import genai_prices.data
from agents.usage import RequestUsage, Usage
from genai_prices import Usage as PriceUsage
from genai_prices.data_snapshot import DataSnapshot, find_provider_by_id
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

PRICES_SOURCE = f"genai-prices {version('genai-prices')}"
"""Where list prices come from (the locked version of the package)."""

OPENAI = "openai"
"""The provider of a model called without a base URL (the SDK's default endpoint)."""


@dataclass(frozen=True, kw_only=True)
class Price:
    """A ``MODEL_PRICES`` entry: US dollars per million tokens, flat (no tiers)."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True)
class PriceTable(Mapping[str, Price]):
    """The prices of one deployment: the ``MODEL_PRICES`` overrides (this mapping), and
    the endpoint whose provider's list prices apply to other models."""

    overrides: Mapping[str, Price] = field(default_factory=dict)
    endpoint: str | None = None
    """The base URL the service calls (None: OpenAI's own API)."""

    def __getitem__(self, model: str) -> Price:
        return self.overrides[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.overrides)

    def __len__(self) -> int:
        return len(self.overrides)

    def has_price(self, model: str) -> bool:
        """Whether calls of ``model`` get a cost (an override or a list price)."""
        return model in self.overrides or _listed(model, self.endpoint) is not None


DEFAULT_PRICES = PriceTable()
"""No overrides, OpenAI's endpoint: list prices only."""


class PriceTableError(ValueError):
    """``MODEL_PRICES`` is not a JSON object of prices."""


def parse_prices(raw: str | None, *, endpoint: str | None = None) -> PriceTable:
    """The price table of a deployment calling ``endpoint`` (None: OpenAI), with ``raw``
    (``MODEL_PRICES``) mapping a model name to ``{"input": .., "cached_input": ..,
    "output": ..}`` over the list prices."""
    if not raw:
        return PriceTable({}, endpoint)
    try:
        given = json.loads(raw)
    except ValueError:
        raise PriceTableError("MODEL_PRICES is not JSON") from None
    if not isinstance(given, dict):
        raise PriceTableError("MODEL_PRICES must be a JSON object {model: prices}")
    table: dict[str, Price] = {}
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
        if not all(math.isfinite(v) and v >= 0 for v in (*values.values(), cached)):
            raise PriceTableError(f"MODEL_PRICES[{model!r}] needs finite, non-negative prices")
        table[str(model)] = Price(
            input=values["input"], cached_input=cached, output=values["output"]
        )
    return PriceTable(table, endpoint)


def cost_usd(
    table: Mapping[str, Price],
    model: str,
    *,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    at: dt.datetime | None = None,
) -> float | None:
    """The cost of ONE model call of ``model`` with these tokens, made at ``at`` (None:
    now), or None when its price is unknown. ``table`` is a ``PriceTable``; a plain
    mapping is taken as overrides on OpenAI's endpoint."""
    cached = max(0, min(cached_input_tokens, input_tokens))
    override = table.get(model)
    if override is not None:
        dollars = (
            (input_tokens - cached) * override.input
            + cached * override.cached_input
            + output_tokens * override.output
        ) / 1_000_000
        return round(dollars, 8)
    endpoint = table.endpoint if isinstance(table, PriceTable) else None
    listed = _listed(model, endpoint)
    if listed is None:
        return None
    provider, ref = listed
    usage = PriceUsage(
        input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=output_tokens
    )
    price = _snapshot().calc(usage, ref, provider, None, at or dt.datetime.now(dt.UTC))
    return float(round(Decimal(price.total_price), 8))


def calls_cost_usd(
    table: Mapping[str, Price],
    model: str,
    calls: Iterable[RequestUsage],
    *,
    at: dt.datetime | None = None,
) -> float | None:
    """The cost of these model calls of ``model`` (the SDK's ``request_usage_entries``),
    each priced on its own so that a tier applies to the call that crossed it; None when
    the price is unknown."""
    calls = list(calls)
    if not calls:  # nothing spent: 0.0 for a priced model, None (unknown) for another
        return cost_usd(table, model, input_tokens=0, cached_input_tokens=0, output_tokens=0, at=at)
    total = 0.0
    for call in calls:
        cost = cost_usd(
            table,
            model,
            input_tokens=call.input_tokens,
            cached_input_tokens=call.input_tokens_details.cached_tokens or 0,
            output_tokens=call.output_tokens,
            at=at,
        )
        if cost is None:
            return None
        total += cost
    return round(total, 8)


def usage_cost_usd(
    table: Mapping[str, Price],
    model: str,
    usage: Usage,
    before: Usage | None = None,
    *,
    at: dt.datetime | None = None,
) -> float | None:
    """The cost of the model calls in ``usage`` (a run's) that ``before`` (the usage of
    the paused run it resumed) did not count, each call priced on its own."""
    return calls_cost_usd(table, model, _calls(usage, before or Usage()), at=at)


def _calls(usage: Usage, before: Usage) -> list[RequestUsage]:
    """The calls in ``usage`` after those of ``before``, one entry each. When the
    entries do not add up to the token counts (a usage without per-call entries), the
    difference as one call."""
    entries = usage.request_usage_entries[len(before.request_usage_entries) :]
    input_tokens = usage.input_tokens - before.input_tokens
    output_tokens = usage.output_tokens - before.output_tokens
    if sum(e.input_tokens for e in entries) == input_tokens and (
        sum(e.output_tokens for e in entries) == output_tokens
    ):
        return list(entries)
    cached = (usage.input_tokens_details.cached_tokens or 0) - (
        before.input_tokens_details.cached_tokens or 0
    )
    return [
        RequestUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=max(0, cached), cache_write_tokens=0
            ),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        )
    ]


@cache
def _snapshot() -> DataSnapshot:
    """The price data bundled with the locked genai-prices (no network, ever)."""
    return DataSnapshot(providers=genai_prices.data.providers, from_auto_update=False)


@cache
def _listed(model: str, endpoint: str | None) -> tuple[str, str] | None:
    """(provider id, model ref) under which genai-prices lists ``model`` called at
    ``endpoint``, or None."""
    snapshot = _snapshot()
    prefix, _, rest = model.partition("/")
    named = find_provider_by_id(snapshot.providers, prefix) if rest else None
    candidates: list[tuple[str, str]] = []
    if endpoint is not None:
        try:
            by_url = snapshot.find_provider(None, None, endpoint).id
        except LookupError:
            by_url = None
        if by_url is not None:
            candidates.append((by_url, model))
            if rest:
                candidates.append((by_url, rest))
    if named is not None:
        candidates.append((named.id, rest))
    elif endpoint is None:
        candidates.append((OPENAI, model))
    for provider, ref in candidates:
        try:
            snapshot.find_provider_model(ref, None, provider, None)
        except LookupError:
            continue
        return provider, ref
    return None
