"""Human approval of tool calls that act (agent/turn/approvals.py): the run pauses, its
state is kept with the session, and any instance resumes it, once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from tests.support.openapi_contract import assert_conforms


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "outbox.jsonl"


@pytest.fixture
def acting(make_client: Callable[..., FlaskClient], outbox: Path) -> FlaskClient:
    return make_client(outbox_path=str(outbox))


def sent(outbox: Path) -> list[dict[str, str]]:
    if not outbox.exists():
        return []
    return [json.loads(line) for line in outbox.read_text().splitlines()]


def pause(client: FlaskClient, session_id: str, message: str = 'send "hi there" to alice') -> dict:
    response = client.post("/chat", json={"message": message, "session_id": session_id})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert_conforms("POST", "/chat", 200, body, response.headers)
    assert body["status"] == "approval_required"
    return body


def decide(client: FlaskClient, session_id: str, decisions: list[dict], **headers: str):
    return client.post(
        f"/sessions/{session_id}/approvals", json={"decisions": decisions}, headers=headers
    )


def test_pause_then_approve_runs_the_tool_once(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    body = pause(acting, "ap-1")
    [call] = body["pending_approvals"]
    assert call["tool"] == "send_message"
    assert json.loads(call["arguments"]) == {"to": "alice", "text": "hi there"}
    assert sent(outbox) == []  # nothing acted yet
    response = decide(acting, "ap-1", [{"call_id": call["call_id"], "approve": True}])
    assert response.status_code == 200, response.get_json()
    done = response.get_json()
    assert_conforms("POST", "/sessions/{session_id}/approvals", 200, done, response.headers)
    assert done["status"] == "completed"
    assert "sent to alice" in done["reply"]
    assert sent(outbox) == [{"to": "alice", "text": "hi there"}]
    session = acting.get("/sessions/ap-1").get_json()
    assert session["pending_approvals"] == []
    [decision] = session["approvals"]
    assert decision["call_id"] == call["call_id"] and decision["approved"] is True
    types = [i.get("role") or i.get("type") for i in session["items"]]
    assert types == ["user", "function_call", "function_call_output", "assistant"]
