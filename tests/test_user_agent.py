"""A user's own agent package (``tests/user_agent/``, outside ``agent/``) run by the service
through ``AGENT_FACTORY``, over the HTTP app, on the SQLite and the Firestore stores
(issue 23): everything the service adds works for it. A tool gets the run context of the
request (also when a resume runs it); approvals and the tool-run guard work for a tool of
the agent a handoff reached; a guardrail that trips is 422 ``guardrail_tripped``, stores
nothing and is charged what its model calls cost; structured output is ``output``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner
from flask.testing import FlaskClient
from openai import AsyncOpenAI

from agent.api.app import create_app
from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.runtime.run_context import RunContext
from agent.service import Service, build_service
from agent.turn import approvals
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL, PROJECT
from tests.support.openapi_contract import assert_conforms, assert_stream_conforms
from tests.support.sse_client import parse_body
from tests.user_agent import app as user

PRICES = json.dumps({MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}})
FACTORY = "tests.user_agent.app:build_agent"
Make = Callable[..., tuple[FlaskClient, Service]]


@pytest.fixture(params=["sqlite", "firestore"])
def make(request: pytest.FixtureRequest, tmp_path: Path, model: DemoModelServer) -> Iterator[Make]:
    """Builds the service with the user's agent on the store of the test's parameter."""
    if request.param == "firestore":
        emulator = request.getfixturevalue("firestore")  # skips where it is not installed
        store = {"HISTORY_BACKEND": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host}
    else:
        store = {"HISTORY_BACKEND": "sqlite", "SQLITE_PATH": str(tmp_path / "h.sqlite3")}
    env = store | {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "OPENAI_BASE_URL": model.base_url,
        "AGENT_MODEL": MODEL,
        "MODEL_MAX_RETRIES": "0",
        "FIRESTORE_TIMEOUT_SECONDS": "3",
        "AUTH_MODE": "none",
        "AGENT_FACTORY": FACTORY,
        "MODEL_PRICES": PRICES,
    }
    services: list[Service] = []

    def build(**overrides: Any) -> tuple[FlaskClient, Service]:
        settings = Settings.from_env(env | {k.upper(): str(v) for k, v in overrides.items()})
        service = build_service(settings)
        services.append(service)
        return create_app(service).test_client(), service

    user.SENT.clear()
    yield build
    for service in services:
        service.close()


def chat(client: FlaskClient, message: str, session_id: str, **body: Any) -> Any:
    return client.post("/chat", json={"message": message, "session_id": session_id} | body)


def items_of(client: FlaskClient, session_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/sessions/{session_id}")
    assert response.status_code == 200, response.get_json()
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


# -- the run context ---------------------------------------------------------------------


def test_a_tool_gets_the_caller_the_session_and_the_request(make: Make) -> None:
    client, _ = make()
    response = chat(client, "call whoami", "ctx-1")
    assert response.status_code == 200, response.get_json()
    request_id = response.headers["X-Request-Id"]
    assert response.get_json()["reply"] == (
        f"[demo model] The whoami tool says: principal=local session=ctx-1 request={request_id}."
    )
    streamed = chat(client, "call whoami", "ctx-1", stream=True)
    done = parse_body(streamed.data)[-1]
    assert done.name == "done", done
    assert f"request={streamed.headers['X-Request-Id']}" in done.data["reply"]


def test_a_paused_runs_stored_state_holds_no_run_context(model: DemoModelServer) -> None:
    """What approvals store: the SDK's RunState JSON. Its own default would keep the
    dataclass's fields (the principal among them) in the stored state."""
    llm = OpenAIChatCompletionsModel(
        model=MODEL, openai_client=AsyncOpenAI(base_url=model.base_url, api_key="x")
    )
    settings = Settings.from_env({"AGENT_FACTORY": FACTORY})
    agent = build_agent(settings, llm)
    context = RunContext("alice@example.com", "s-secret", "r-secret")

    async def pause() -> Any:
        config = RunConfig(tracing_disabled=True)
        return await Runner.run(
            agent, '@outbox send "x" to bob', context=context, run_config=config
        )

    result = asyncio.run(pause())
    assert result.interruptions
    stored = json.dumps(approvals.state_json(result.to_state()))
    for private in ("alice@example.com", "s-secret", "r-secret"):
        assert private not in stored


# -- handoffs, approvals, the tool-run guard ---------------------------------------------


def test_an_approval_and_the_guard_work_for_a_tool_reached_by_handoff(make: Make) -> None:
    client, service = make()
    paused = chat(client, '@outbox send "lunch at noon?" to bob', "handoff-1")
    body = paused.get_json()
    assert paused.status_code == 200 and body["status"] == "approval_required", body
    assert_conforms("POST", "/chat", 200, body, paused.headers)
    (call,) = body["pending_approvals"]
    assert call["tool"] == "send_message"
    assert json.loads(call["arguments"]) == {"text": "lunch at noon?", "to": "bob"}
    assert user.SENT == []  # nothing acts before a person approves

    verdicts = [{"call_id": call["call_id"], "approve": True}]
    decision = {"pause_id": body["pause_id"], "decisions": verdicts}
    resumed = client.post("/sessions/handoff-1/approvals", json=decision)
    assert resumed.status_code == 200, resumed.get_json()
    assert resumed.get_json()["reply"] == "[demo model] Done: sent to bob."
    # The resumed run's context is the resuming request's, rebuilt, not a stored one.
    sent = {"to": "bob", "text": "lunch at noon?", "by": "local"}
    assert [sent | {"request": resumed.headers["X-Request-Id"]}] == user.SENT
    # The call went through the tool-run guard: its record is in the store.
    generation = service.store.current_generation("handoff-1", utc_now())
    assert generation is not None
    assert service.tool_runs.used("handoff-1", generation, {call["call_id"]}) == {call["call_id"]}
    again = client.post("/sessions/handoff-1/approvals", json=decision)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "approval_not_pending"
    assert len(user.SENT) == 1


def test_the_approval_fingerprint_covers_the_agent_reached_by_handoff(
    model: DemoModelServer,
) -> None:
    """A paused run may be inside the agent a handoff reached: a change to that agent must
    make its pauses stale, as a change to the first one does."""
    settings = Settings.from_env({"OPENAI_BASE_URL": model.base_url, "AGENT_FACTORY": FACTORY})
    agent = build_agent(settings, build_model(settings))
    before = approvals.fingerprint(agent, MODEL)
    (outbox,) = agent.handoffs
    assert isinstance(outbox, Agent)
    outbox.instructions = "You send messages, but only to friends."
    assert approvals.fingerprint(agent, MODEL) != before


# -- guardrails --------------------------------------------------------------------------


def test_a_tripped_input_guardrail_is_422_naming_it_and_stores_nothing(make: Make) -> None:
    client, _ = make()
    assert chat(client, "hello", "guard-1").status_code == 200
    stored = items_of(client, "guard-1")
    for session_id in ("guard-1", "guard-new"):
        refused = chat(client, "this is forbidden", session_id)
        assert refused.status_code == 422
        body = refused.get_json()
        assert body["error"]["code"] == "guardrail_tripped"
        assert body["error"]["guardrail"] == "no_forbidden_words"
        assert body["error"]["kind"] == "input"
        assert_conforms("POST", "/chat", 422, body, refused.headers)
    assert items_of(client, "guard-1") == stored
    assert client.get("/sessions/guard-new").status_code == 404
    streamed = chat(client, "this is forbidden", "guard-1", stream=True)
    assert streamed.status_code == 200
    events = parse_body(streamed.data)
    assert events[-1].name == "error"
    assert events[-1].data == body
    assert_stream_conforms("/chat", [(e.name, e.data) for e in events], streamed.headers)
    assert items_of(client, "guard-1") == stored


def test_a_tripped_output_guardrail_is_charged_its_model_calls(
    make: Make, model: DemoModelServer
) -> None:
    client, service = make(budget_usd_per_principal_per_day=100)
    model.reset()
    refused = chat(client, "tell me the SECRET", "guard-out")
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert (error["guardrail"], error["kind"]) == ("no_secrets_out", "output")
    assert client.get("/sessions/guard-out").status_code == 404
    (usage,) = model.usages  # the model answered once, and that call is charged
    billed = (2 * usage["prompt_tokens"] + 8 * usage["completion_tokens"]) / 1_000_000
    assert service.spend.spent("local", utc_now().date()) == pytest.approx(billed)


# -- structured output -------------------------------------------------------------------


def test_structured_output_is_the_validated_value_beside_the_reply(make: Make) -> None:
    client, _ = make(agent_factory="tests.user_agent.app:build_structured")
    response = chat(client, "hello", "typed-1", stream=False)
    body = response.get_json()
    assert response.status_code == 200, body
    assert_conforms("POST", "/chat", 200, body, response.headers)
    assert body["output"] == {
        "reply": '[demo model] You said: "hello". This is message 1 of our conversation.',
        "messages": 1,
    }
    assert json.loads(body["reply"]) == body["output"]
    # The history keeps it as the assistant's answer.
    answer = items_of(client, "typed-1")[-1]
    assert json.loads(answer["content"][0]["text"]) == body["output"]
    # Streamed, the done event carries it; with an Idempotency-Key, a replay too.
    streamed = chat(client, "again", "typed-1", stream=True)
    done = parse_body(streamed.data)[-1]
    assert done.name == "done" and done.data["output"]["messages"] == 2
    key = {"Idempotency-Key": "typed-key-1"}
    first = client.post("/chat", json={"message": "third", "session_id": "typed-1"}, headers=key)
    replay = client.post("/chat", json={"message": "third", "session_id": "typed-1"}, headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.get_json()["output"] == first.get_json()["output"]
    assert first.get_json()["output"]["messages"] == 3


def test_a_text_agent_has_no_output(make: Make) -> None:
    client, _ = make()
    body = chat(client, "hello", "plain-1").get_json()
    assert "output" not in body and body["reply"].startswith("[demo model]")


def test_the_readme_shows_this_package() -> None:
    """ "Make it yours" in the README quotes tests/user_agent/app.py: every function it
    shows is there, and each is exercised above."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Make it yours", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    shown = re.findall(r"^(?:async )?def (\w+)", code, re.MULTILINE)
    assert shown == ["whoami", "send_message", "no_forbidden_words", "build_agent"]
    assert all(hasattr(user, name) for name in shown)
    assert "AGENT_FACTORY" in section and "tests/test_user_agent.py" in section
