"""What a turn costs: the price table's arithmetic, its override, and ``usage.cost_usd``
on real turns against the demo model (which reports token usage as OpenAI does)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from agent.base.settings import Settings
from agent.runtime.pricing import DEFAULT_PRICES, PriceTableError, cost_usd, parse_prices
from agent.service import build_service
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms


def test_cost_is_the_tables_arithmetic_with_cached_input_at_its_own_rate() -> None:
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    cost = cost_usd(
        DEFAULT_PRICES,
        "gpt-4o-mini",
        input_tokens=1_000_000,
        cached_input_tokens=400_000,
        output_tokens=500_000,
    )
    assert cost == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.5 * 0.60)
    assert (
        cost_usd(
            DEFAULT_PRICES, "no-such-model", input_tokens=1, cached_input_tokens=0, output_tokens=1
        )
        is None
    )


def test_model_prices_override_and_extend_the_table() -> None:
    table = parse_prices(
        json.dumps(
            {
                "gpt-4o-mini": {"input": 1, "output": 2},
                "mine": {"input": 3, "cached_input": 1, "output": 4},
            }
        )
    )
    assert table["gpt-4o-mini"].input == 1 and table["gpt-4o-mini"].cached_input == 1
    assert table["mine"].output == 4 and "gpt-4o" in table


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        '{"m": 1}',
        '{"m": {"input": 1}}',
        '{"m": {"input": -1, "output": 1}}',
        '{"m": {"input": 1, "output": 1, "per": 2}}',
    ],
)
def test_a_bad_price_table_stops_startup(raw: str, settings_env: dict[str, str]) -> None:
    with pytest.raises(PriceTableError, match="MODEL_PRICES"):
        build_service(Settings.from_env(settings_env | {"MODEL_PRICES": raw}))


def test_each_turn_reports_its_cost_from_the_table(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    prices = {MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}}
    client = make_client(model_prices=json.dumps(prices))
    response = client.post("/chat", json={"message": "What is 12 * (3 + 4)?"})
    assert response.status_code == 200
    usage = response.get_json()["usage"]
    assert usage["requests"] == 2  # a tool call and the answer: both are paid for
    expected = (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1_000_000
    assert usage["cost_usd"] == pytest.approx(expected) and usage["cost_usd"] > 0
    assert_conforms("POST", "/chat", 200, response.get_json(), response.headers)


def test_a_model_without_a_price_costs_null_not_a_guess(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    response = make_client().post("/chat", json={"message": "hi"})
    assert response.status_code == 200 and response.get_json()["usage"]["cost_usd"] is None
