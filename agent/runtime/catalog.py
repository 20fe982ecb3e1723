"""The models this service knows: context window, release and retirement dates, as the
providers published them on ``CATALOG_AS_OF``.

Prices are not here: ``genai-prices`` keeps them (``agent/runtime/pricing.py``), and a
test checks every model below has one. The context window sets the default context
budget (``CONTEXT_MAX_TOKENS`` unset); the retirement date makes start-up warn, in one
log line, when a configured model is past it (its calls fail: Vertex AI answers 404 for
a retired model) or within a month of it (Vertex AI blocks new access a month before).

Sources, read on ``CATALOG_AS_OF``:

* Vertex AI, "Model versions and lifecycle"
  (https://docs.cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions):
  release and retirement dates; a stable model's retirement date "may be extended but
  won't be moved to an earlier date", so a date listed as "X or later" is kept as X.
  Context windows from each model's page (maximum input tokens).
* OpenAI, "Deprecations" (https://developers.openai.com/api/docs/deprecations):
  shutdown dates; context windows from each model's page.

A dated snapshot id (``gpt-4o-mini-2024-07-18``) is its model unless listed itself.
Update this table when a provider announces a date, and move ``CATALOG_AS_OF``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

CATALOG_AS_OF = dt.date(2026, 12, 7)
NOTICE_DAYS = 30
"""How long before a retirement date start-up warns (Vertex AI blocks new access to a
model one month before it retires)."""

VERTEX_LIFECYCLE = "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
OPENAI_DEPRECATIONS = "https://developers.openai.com/api/docs/deprecations"


@dataclass(frozen=True, kw_only=True)
class KnownModel:
    context_window: int
    """Maximum input tokens."""
    released: dt.date
    retires: dt.date | None
    """The provider's retirement (shutdown) date; None: none announced."""
    replacement: str | None = None
    """What the provider recommends instead, named as this service spells models."""
    source: str


def _d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


MODELS: Mapping[str, KnownModel] = {
    # Vertex AI (MODEL_PROVIDER=vertex names models publisher/model).
    "google/gemini-3.8-flash": KnownModel(
        context_window=1_048_576,
        released=_d("2026-09-02"),
        retires=_d("2027-09-02"),
        source=VERTEX_LIFECYCLE,
    ),
    "google/gemini-3.5-flash": KnownModel(
        context_window=1_048_576,
        released=_d("2026-05-19"),
        retires=_d("2027-05-19"),
        source=VERTEX_LIFECYCLE,
    ),
    "google/gemini-3.5-flash-lite": KnownModel(
        context_window=1_048_576,
        released=_d("2026-07-21"),
        retires=_d("2027-07-21"),
        source=VERTEX_LIFECYCLE,
    ),
    "google/gemini-2.5-pro": KnownModel(
        context_window=1_048_576,
        released=_d("2025-06-17"),
        retires=_d("2026-10-20"),
        replacement="google/gemini-3.8-flash",
        source=VERTEX_LIFECYCLE,
    ),
    "google/gemini-2.5-flash": KnownModel(
        context_window=1_048_576,
        released=_d("2025-06-17"),
        retires=_d("2026-10-20"),
        replacement="google/gemini-3.8-flash",
        source=VERTEX_LIFECYCLE,
    ),
    "google/gemini-2.5-flash-lite": KnownModel(
        context_window=1_048_576,
        released=_d("2025-07-22"),
        retires=_d("2026-10-20"),
        replacement="google/gemini-3.5-flash-lite",
        source=VERTEX_LIFECYCLE,
    ),
    # OpenAI.
    "gpt-4o-mini": KnownModel(
        context_window=128_000,
        released=_d("2024-07-18"),
        retires=_d("2027-01-14"),
        replacement="gpt-6-luna",
        source=OPENAI_DEPRECATIONS,
    ),
    "gpt-4o": KnownModel(
        context_window=128_000,
        released=_d("2024-05-13"),
        retires=_d("2027-01-14"),
        replacement="gpt-6-luna",
        source=OPENAI_DEPRECATIONS,
    ),
    "gpt-4o-2024-05-13": KnownModel(
        context_window=128_000,
        released=_d("2024-05-13"),
        retires=_d("2026-10-23"),
        replacement="gpt-6-luna",
        source=OPENAI_DEPRECATIONS,
    ),
    "gpt-4.1": KnownModel(
        context_window=1_047_576,
        released=_d("2025-04-14"),
        retires=_d("2027-01-14"),
        replacement="gpt-6-luna",
        source=OPENAI_DEPRECATIONS,
    ),
    "gpt-4.1-mini": KnownModel(
        context_window=1_047_576,
        released=_d("2025-04-14"),
        retires=_d("2027-01-14"),
        replacement="gpt-6-luna",
        source=OPENAI_DEPRECATIONS,
    ),
    "gpt-4.1-nano": KnownModel(
        context_window=1_047_576,
        released=_d("2025-04-14"),
        retires=_d("2026-10-23"),
        source=OPENAI_DEPRECATIONS,
    ),
}

_SNAPSHOT = re.compile(r"^(?P<model>.+)-\d{4}-\d{2}-\d{2}$")


def known(model: str) -> KnownModel | None:
    """What the table says of ``model`` (a dated snapshot: of its model), or None."""
    if model in MODELS:
        return MODELS[model]
    match = _SNAPSHOT.match(model)
    return MODELS.get(match.group("model")) if match else None


def context_window(model: str) -> int | None:
    entry = known(model)
    return None if entry is None else entry.context_window


def retirement_warning(setting: str, model: str, today: dt.date) -> str | None:
    """One line for the start-up log when ``model`` (configured as ``setting``) is past
    its retirement date or within ``NOTICE_DAYS`` of it; else None."""
    entry = known(model)
    if entry is None or entry.retires is None:
        return None
    instead = f"; {entry.replacement} replaces it" if entry.replacement else ""
    if today >= entry.retires:
        return (
            f"{setting} {model} was retired on {entry.retires.isoformat()} ({entry.source}):"
            f" its calls fail{instead}"
        )
    if (entry.retires - today).days <= NOTICE_DAYS:
        return (
            f"{setting} {model} retires on {entry.retires.isoformat()} ({entry.source}):"
            f" move before then{instead}"
        )
    return None
