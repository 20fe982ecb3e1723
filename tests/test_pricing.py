"""What a model call costs: list prices from the locked ``genai-prices`` (tiers per call,
dated snapshots, the ``google/`` prefix, prices that change on a date), ``MODEL_PRICES``
over them, offline; a budget refuses to start with a model it cannot price; and
``usage.cost_usd`` on real turns against the demo model (which reports token usage as
OpenAI does)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from agents.usage import RequestUsage, Usage
from flask.testing import FlaskClient
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from agent.base.settings import Settings
from agent.runtime.pricing import (
    DEFAULT_PRICES,
    PriceTableError,
    cost_usd,
    parse_prices,
    usage_cost_usd,
)
from agent.service import UnpricedModelError, build_service
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL, REPO_ROOT
from tests.support.openapi_contract import assert_conforms

VERTEX = "https://aiplatform.googleapis.com/v1/projects/p/locations/global/endpoints/openapi"
DAY = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
M = 1_000_000


def per_million(tokens: int, dollars: float) -> float:
    return tokens * dollars / M


def test_a_dated_snapshot_id_is_priced_as_its_model() -> None:
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens.
    tokens = {"input_tokens": M, "cached_input_tokens": 400_000, "output_tokens": 500_000}
    expected = 0.6 * 0.15 + 0.4 * 0.075 + 0.5 * 0.60
    assert cost_usd(DEFAULT_PRICES, "gpt-4o-mini", **tokens) == pytest.approx(expected)
    assert cost_usd(DEFAULT_PRICES, "gpt-4o-mini-2024-07-18", **tokens) == pytest.approx(expected)
    assert cost_usd(DEFAULT_PRICES, "no-such-model", **tokens) is None


def test_a_prompt_above_the_tier_boundary_pays_the_higher_rate_on_every_token() -> None:
    # Gemini 2.5 Pro: $1.25 in, $0.125 cached, $10 out up to 200k prompt tokens; a prompt
    # above that pays $2.50, $0.25 and $15 on all its tokens.
    table = parse_prices(None, endpoint=VERTEX)

    def pro(prompt: int, cached: int = 0) -> float | None:
        return cost_usd(
            table,
            "google/gemini-2.5-pro",
            input_tokens=prompt,
            cached_input_tokens=cached,
            output_tokens=1_000,
            at=DAY,
        )

    assert pro(200_000) == pytest.approx(per_million(200_000, 1.25) + per_million(1_000, 10))
    assert pro(200_001, cached=100_000) == pytest.approx(
        per_million(100_001, 2.5) + per_million(100_000, 0.25) + per_million(1_000, 15)
    )


def entry(input_tokens: int, output_tokens: int, cached: int = 0) -> RequestUsage:
    return RequestUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
    )


def usage_of(*calls: RequestUsage) -> Usage:
    usage = Usage()
    for call in calls:
        usage.add(
            Usage(
                requests=1,
                input_tokens=call.input_tokens,
                output_tokens=call.output_tokens,
                total_tokens=call.total_tokens,
                input_tokens_details=call.input_tokens_details,
                output_tokens_details=call.output_tokens_details,
            )
        )
    return usage


def test_tiers_apply_per_model_call_not_to_a_turns_sum() -> None:
    """Two calls of 150k prompt tokens each: 300k in the turn, but neither call crossed
    200k, so both pay the base rate; a resumed run pays only its own calls."""
    table = parse_prices(None, endpoint=VERTEX)
    model = "google/gemini-2.5-pro"
    two = usage_of(entry(150_000, 500), entry(150_000, 500))
    assert len(two.request_usage_entries) == 2
    base = per_million(300_000, 1.25) + per_million(1_000, 10)
    assert usage_cost_usd(table, model, two, at=DAY) == pytest.approx(base)
    one = usage_of(entry(300_000, 1_000))
    assert usage_cost_usd(table, model, one, at=DAY) == pytest.approx(
        per_million(300_000, 2.5) + per_million(1_000, 15)
    )
    # A resumed run: the paused part (``before``) was reported by the turn that paused.
    before = usage_of(entry(150_000, 500))
    resumed = usage_of(entry(150_000, 500), entry(250_000, 100))
    assert usage_cost_usd(table, model, resumed, before, at=DAY) == pytest.approx(
        per_million(250_000, 2.5) + per_million(100, 15)
    )
    # No call: nothing spent on a priced model, unknown on an unpriced one.
    assert usage_cost_usd(table, model, Usage()) == 0.0
    assert usage_cost_usd(table, "some-local-model", Usage()) is None


def test_vertex_names_are_priced_and_a_price_is_the_one_in_force_that_day() -> None:
    table = parse_prices(None, endpoint=VERTEX)
    tokens = {"input_tokens": M, "cached_input_tokens": 400_000, "output_tokens": 500_000}
    # Gemini 2.5 Flash's cached input is $0.03, not the $0.075 the old hand-kept table had.
    assert cost_usd(table, "google/gemini-2.5-flash", **tokens, at=DAY) == pytest.approx(
        0.6 * 0.30 + 0.4 * 0.03 + 0.5 * 2.50
    )
    # Gemini 3.8 Flash (the Vertex default): $0.75 / $0.075 / $3.75 in 2026, doubled from
    # 2027-01-01.
    in_2026 = cost_usd(table, "google/gemini-3.8-flash", **tokens, at=DAY)
    assert in_2026 == pytest.approx(0.6 * 0.75 + 0.4 * 0.075 + 0.5 * 3.75)
    in_2027 = cost_usd(
        table, "google/gemini-3.8-flash", **tokens, at=dt.datetime(2027, 1, 2, tzinfo=dt.UTC)
    )
    assert in_2027 == pytest.approx(2 * in_2026)
    # The prefix alone names the provider (a stand-in on loopback, a LiteLLM proxy).
    local = parse_prices(None, endpoint="http://127.0.0.1:9/v1")
    assert cost_usd(local, "google/gemini-3.8-flash", **tokens, at=DAY) == in_2026
    # A self-hosted model on an endpoint genai-prices does not know has no list price.
    assert cost_usd(local, "gpt-4o-mini", **tokens) is None
    assert not local.has_price("llama3") and table.has_price("google/gemini-3.8-flash")


def test_model_prices_override_and_extend_the_list() -> None:
    table = parse_prices(
        json.dumps(
            {
                "gpt-4o-mini": {"input": 1, "output": 2},
                "mine": {"input": 3, "cached_input": 1, "output": 4},
            }
        )
    )
    assert table["gpt-4o-mini"].input == 1 and table["gpt-4o-mini"].cached_input == 1
    tokens = {"input_tokens": M, "cached_input_tokens": 0, "output_tokens": M}
    assert cost_usd(table, "gpt-4o-mini", **tokens) == pytest.approx(3.0)
    assert cost_usd(table, "mine", **tokens) == pytest.approx(7.0)
    assert cost_usd(table, "gpt-4o", **tokens) == pytest.approx(2.5 + 10.0)  # listed
    assert table.has_price("mine") and not table.has_price("not-mine")


def test_prices_are_read_offline_and_no_one_else_can_swap_them() -> None:
    """In a fresh interpreter whose every network call raises: the package imports,
    prices, and a snapshot someone else installs in genai-prices (what its
    ``UpdatePrices`` does with prices it downloaded) does not change ours."""
    script = textwrap.dedent(
        """
        import sys

        def no_network(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
                raise RuntimeError(f"network call: {event} {args!r}")

        sys.addaudithook(no_network)
        from genai_prices.data_snapshot import DataSnapshot, set_custom_snapshot
        from agent.runtime.pricing import DEFAULT_PRICES, cost_usd

        tokens = dict(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=0)
        before = cost_usd(DEFAULT_PRICES, "gpt-4o-mini", **tokens)
        set_custom_snapshot(DataSnapshot(providers=[], from_auto_update=True))
        after = cost_usd(DEFAULT_PRICES, "gpt-4o-mini", **tokens)
        print(before, after)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.15", "0.15"]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        '{"m": 1}',
        '{"m": {"input": 1}}',
        '{"m": {"input": -1, "output": 1}}',
        '{"m": {"input": NaN, "output": 1}}',
        '{"m": {"input": 1, "output": 1, "per": 2}}',
    ],
)
def test_a_bad_price_table_stops_startup(raw: str, settings_env: dict[str, str]) -> None:
    with pytest.raises(PriceTableError, match="MODEL_PRICES"):
        build_service(Settings.from_env(settings_env | {"MODEL_PRICES": raw}))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({}, f"AGENT_MODEL={MODEL}"),
        (
            {
                "MODEL_PRICES": json.dumps({MODEL: {"input": 1, "output": 2}}),
                "CONTEXT_SUMMARY_MODEL": "unpriced-summariser",
            },
            "CONTEXT_SUMMARY_MODEL=unpriced-summariser",
        ),
    ],
)
def test_a_budget_refuses_to_start_with_a_model_it_cannot_price(
    extra: dict[str, str], named: str, settings_env: dict[str, str]
) -> None:
    env = settings_env | {"BUDGET_USD_PER_PRINCIPAL_PER_DAY": "5"} | extra
    with pytest.raises(UnpricedModelError) as refused:
        build_service(Settings.from_env(env))
    message = str(refused.value)
    assert named in message and "MODEL_PRICES" in message and "\n" not in message


def test_a_budget_starts_when_every_model_has_a_price(settings_env: dict[str, str]) -> None:
    listed = {"AGENT_MODEL": "google/gemini-3.8-flash", "CONTEXT_SUMMARY_MODEL": "gpt-4o-mini"}
    env = settings_env | {"BUDGET_USD_PER_PRINCIPAL_PER_DAY": "5", "OPENAI_BASE_URL": ""}
    env |= listed | {"OPENAI_API_KEY": "sk-never-used"}
    build_service(Settings.from_env(env)).close()


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


def test_a_turn_is_priced_at_the_list_price_of_its_vertex_name(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    """A ``google/`` model behind a compatible endpoint (the demo model stands in) gets
    Google's list price with no ``MODEL_PRICES``: $1.25 in and $10 out for Gemini 2.5 Pro
    prompts under 200k tokens."""
    client = make_client(agent_model="google/gemini-2.5-pro")
    response = client.post("/chat", json={"message": "What is 12 * (3 + 4)?"})
    assert response.status_code == 200
    usage = response.get_json()["usage"]
    expected = per_million(usage["input_tokens"], 1.25) + per_million(usage["output_tokens"], 10)
    assert usage["cost_usd"] == pytest.approx(expected) and usage["cost_usd"] > 0


def test_a_model_without_a_price_costs_null_not_a_guess(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    response = make_client().post("/chat", json={"message": "hi"})
    assert response.status_code == 200 and response.get_json()["usage"]["cost_usd"] is None
