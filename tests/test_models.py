"""The models the service knows (agent/runtime/catalog.py): every one has a price and a
window, the Vertex AI default is a current model, and start-up says in one log line when
a configured model is past its retirement date."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from agent.base.settings import VERTEX_DEFAULT_MODEL, Settings
from agent.runtime import catalog, context
from agent.runtime.pricing import DEFAULT_PRICES, cost_usd
from agent.service import build_service
from tests.support.constants import REPO_ROOT

TODAY = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)


def test_every_known_model_has_a_list_price_and_a_window() -> None:
    tokens = {"input_tokens": 1_000, "cached_input_tokens": 0, "output_tokens": 1_000}
    for model, entry in catalog.MODELS.items():
        cost = cost_usd(DEFAULT_PRICES, model, **tokens, at=TODAY)
        assert cost is not None and cost > 0, model
        assert entry.context_window >= 128_000, model
        assert entry.retires is None or entry.retires > entry.released, model
        assert entry.replacement is None or entry.replacement.startswith(("google/", "gpt-"))


def test_the_vertex_default_is_generally_available_and_far_from_retirement() -> None:
    entry = catalog.known(VERTEX_DEFAULT_MODEL)
    assert entry is not None and entry.retires is not None
    assert entry.released <= catalog.CATALOG_AS_OF
    assert (entry.retires - catalog.CATALOG_AS_OF).days > 180
    # deploy/config.env deploys the same default.
    config = (REPO_ROOT / "deploy" / "config.env").read_text()
    assert f"VERTEX_DEFAULT_MODEL:-{VERTEX_DEFAULT_MODEL}}}" in config


def test_windows_come_from_the_table_and_snapshots_are_their_model() -> None:
    assert catalog.context_window("gpt-4o-mini-2024-07-18") == 128_000
    assert context.default_budget("google/gemini-3.8-flash") == (
        1_048_576 - context.ANSWER_ROOM_TOKENS
    )
    # A snapshot the provider retires early is listed on its own.
    assert catalog.known("gpt-4o-2024-05-13") != catalog.known("gpt-4o-2024-11-20")


def vertex_env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    return store_env | {
        "MODEL_PROVIDER": "vertex",
        "GOOGLE_CLOUD_PROJECT": "p-1",
        "AUTH_MODE": "none",
        **extra,
    }


def warnings_at_startup(env: dict[str, str], caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.service"):
        build_service(Settings.from_env(env), clock=lambda: TODAY).close()
    return [r.getMessage() for r in caplog.records if r.name == "agent.service"]


def test_a_retired_model_is_named_in_one_line_at_startup(
    store_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    retired = vertex_env(store_env, AGENT_MODEL="google/gemini-2.5-flash")
    lines = warnings_at_startup(retired, caplog)
    assert lines == [
        "AGENT_MODEL google/gemini-2.5-flash was retired on 2026-10-20"
        f" ({catalog.VERTEX_LIFECYCLE}): its calls fail; google/gemini-3.8-flash replaces it"
    ]
    # The summariser's model too; a model near its date is announced ahead of it.
    both = vertex_env(
        store_env,
        AGENT_MODEL="google/gemini-3.8-flash",
        CONTEXT_SUMMARY_MODEL="google/gemini-2.5-pro",
    )
    assert [line.split(" was ")[0] for line in warnings_at_startup(both, caplog)] == [
        "CONTEXT_SUMMARY_MODEL google/gemini-2.5-pro"
    ]
    assert catalog.retirement_warning("AGENT_MODEL", "gpt-4o-mini", dt.date(2026, 12, 20)) == (
        f"AGENT_MODEL gpt-4o-mini retires on 2027-01-14 ({catalog.OPENAI_DEPRECATIONS}):"
        " move before then; gpt-6-luna replaces it"
    )


def test_the_default_and_unknown_models_start_without_a_warning(
    store_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    assert warnings_at_startup(vertex_env(store_env), caplog) == []
    unknown = vertex_env(store_env, AGENT_MODEL="google/some-tuned-model")
    assert warnings_at_startup(unknown, caplog) == []
