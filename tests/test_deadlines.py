"""A turn keeps its deadline: calls that cannot finish are not started or are cut short."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from agents import OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from flask.testing import FlaskClient

from agent.base.settings import Settings, SettingsError
from agent.runtime.deadline import DeadlineBoundModel, NoTimeForModelCall, within
from agent.runtime.factory import build_agent
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms


def test_no_model_call_is_started_with_too_little_time_left(make_client, model) -> None:
    # Budget 2.5 s, 0.5 s of it kept for the commit: the run must end 2.0 s in. The
    # tool call's model call takes 1 s; after it, about 0.9 s is left, under the 1.2 s
    # a call needs, so the answer's call is never made.
    client: FlaskClient = make_client(
        function_timeout_seconds=3, deadline_margin_seconds=0.5, model_call_min_seconds=1.2
    )
    model.control(delay_seconds=1.0)
    started = time.monotonic()
    response = client.post("/chat", json={"message": "what is 2 + 3?", "session_id": "late"})
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "deadline_exceeded"
    assert_conforms("POST", "/chat", 504, response.get_json(), response.headers)
    assert model.request_count == 1  # the second call was refused, not cut short
    assert elapsed < 1.7  # answered when the call was refused, not at the deadline
    model.reset()
    assert client.get("/sessions/late").status_code == 404  # nothing stored
    # The claim was released: the session takes a turn at once.
    assert client.post("/chat", json={"message": "hi", "session_id": "late"}).status_code == 200


def test_the_same_turn_succeeds_with_enough_time(make_client, model) -> None:
    client = make_client(function_timeout_seconds=6, deadline_margin_seconds=0.5)
    model.control(delay_seconds=1.0)
    response = client.post("/chat", json={"message": "what is 2 + 3?"})
    assert response.status_code == 200 and "5" in response.get_json()["reply"]
    assert model.request_count == 2


def test_a_model_call_is_cut_at_the_time_left_not_at_the_model_timeout(model) -> None:
    # No outer cancellation here: only the wrapper bounds the call.
    set_tracing_disabled(True)
    model.control(delay_seconds=5)
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="x", max_retries=0)
    inner = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    bounded = DeadlineBoundModel(inner, call_timeout=60, min_call_seconds=0.1)
    agent = build_agent(Settings.from_env({"AGENT_MAX_TURNS": "1"}), bounded)

    async def attempt() -> float:
        started = time.monotonic()
        with pytest.raises((TimeoutError, openai.APITimeoutError)):
            await within(started + 1.0, Runner.run(agent, "hello"))
        return time.monotonic() - started

    assert 0.9 < asyncio.run(attempt()) < 2.0  # not the model's 5 s, nor the 60 s timeout


def test_the_refusal_is_a_timeout_error(model) -> None:
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="x", max_retries=0)
    inner = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    bounded = DeadlineBoundModel(inner, call_timeout=60, min_call_seconds=2)
    agent = build_agent(Settings.from_env({}), bounded)
    with pytest.raises(NoTimeForModelCall):
        asyncio.run(within(time.monotonic() + 1.5, Runner.run(agent, "hello")))
    assert issubclass(NoTimeForModelCall, TimeoutError)  # mapped to 504 like any timeout
    assert model.request_count == 0


def test_without_a_deadline_the_model_is_not_bounded(model: DemoModelServer) -> None:
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="x", max_retries=0)
    inner = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    bounded = DeadlineBoundModel(inner, call_timeout=60, min_call_seconds=30)
    result = asyncio.run(Runner.run(build_agent(Settings.from_env({}), bounded), "hello"))
    assert str(result.final_output).startswith("[demo model]")


def test_max_turns_is_a_setting_and_exceeding_it_is_422(make_client) -> None:
    assert Settings.from_env({}).agent_max_turns == 10
    assert Settings.from_env({"AGENT_MAX_TURNS": "3"}).agent_max_turns == 3
    client = make_client(agent_max_turns=1)  # a tool round trip needs two model calls
    response = client.post("/chat", json={"message": "what is 2 + 2?", "session_id": "mt"})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "max_turns_exceeded"
    assert_conforms("POST", "/chat", 422, response.get_json(), response.headers)
    assert (
        make_client(agent_max_turns=2)
        .post("/chat", json={"message": "what is 2 + 2?", "session_id": "mt"})
        .status_code
        == 200
    )


@pytest.mark.parametrize(
    "env",
    [
        {"MODEL_CALL_MIN_SECONDS": "-1"},
        # Half the budget at most: 10 s timeout - 3 s margin = 7 s budget, 3.5 s max.
        {
            "FUNCTION_TIMEOUT_SECONDS": "10",
            "DEADLINE_MARGIN_SECONDS": "3",
            "MODEL_CALL_MIN_SECONDS": "4",
        },
        {"STREAM_MAX_DELTA_BYTES": "100"},
    ],
)
def test_deadline_and_stream_settings_are_checked_at_startup(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(reversed(env))):
        Settings.from_env(env)
