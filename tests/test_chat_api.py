"""The conversation API through the app's test client, on the real emulator."""

from __future__ import annotations

import datetime as dt
import re

from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from tests.support.openapi_contract import assert_conforms


def chat(client: FlaskClient, message: str, session_id: str | None = None) -> dict:
    body = {"message": message} | ({"session_id": session_id} if session_id else {})
    response = client.post("/chat", json=body)
    assert response.status_code == 200, response.get_json()
    assert_conforms("POST", "/chat", 200, response.get_json(), response.headers)
    return response.get_json()


def test_healthz_answers_without_dependencies(client: FlaskClient, model: DemoModelServer) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert model.request_count == 0


def test_new_session_gets_an_unguessable_id(client: FlaskClient) -> None:
    first = chat(client, "hello")
    second = chat(client, "hello")
    assert first["new_session"] is True
    assert first["session_id"] != second["session_id"]
    # token_urlsafe(24): 32 characters of 6 bits, 192 random bits (>= 122 required)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", first["session_id"])
    assert first["reply"].startswith("[demo model]")
    assert first["usage"]["requests"] == 1
    assert first["usage"]["total_tokens"] == (
        first["usage"]["input_tokens"] + first["usage"]["output_tokens"]
    )


def test_multi_turn_memory(client: FlaskClient, model: DemoModelServer) -> None:
    first = chat(client, "my name is Ada", "conv-1")
    assert first["new_session"] is True
    second = chat(client, "what is my name?", "conv-1")
    assert second["new_session"] is False
    assert 'your first message was: "my name is Ada"' in second["reply"]
    assert "message 2" in second["reply"]
    # The model was sent the whole history: both user messages and the first reply.
    sent = model.requests[-1]["messages"]
    contents = [m.get("content") for m in sent]
    assert "my name is Ada" in contents and first["reply"] in contents


def test_expires_at_slides_with_each_turn(client: FlaskClient) -> None:
    first = chat(client, "one", "slide")
    second = chat(client, "two", "slide")
    t1 = dt.datetime.fromisoformat(first["expires_at"].replace("Z", "+00:00"))
    t2 = dt.datetime.fromisoformat(second["expires_at"].replace("Z", "+00:00"))
    assert first["expires_at"].endswith("Z")
    assert t2 > t1
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=3590) < t2 - now <= dt.timedelta(seconds=3600)


def test_tool_round_trip(client: FlaskClient) -> None:
    reply = chat(client, "what is 12 * (3 + 4)?", "calc")
    assert "84" in reply["reply"]
    assert reply["usage"]["requests"] == 2  # tool call, then the answer
    items = client.get("/sessions/calc").get_json()["items"]
    types = [item.get("role") or item.get("type") for item in items]
    assert types == ["user", "function_call", "function_call_output", "assistant"]
    assert items[1]["name"] == "calculate"
    assert items[2]["output"] == "84"


def test_get_session_returns_items_in_order(client: FlaskClient) -> None:
    chat(client, "first", "ordered")
    chat(client, "second", "ordered")
    response = client.get("/sessions/ordered")
    assert response.status_code == 200
    body = response.get_json()
    assert_conforms("GET", "/sessions/ordered", 200, body, response.headers)
    assert body["turns"] == 2
    users = [i["content"] for i in body["items"] if i.get("role") == "user"]
    assert users == ["first", "second"]
    assert len(body["items"]) == 4


def test_unknown_session_is_404(client: FlaskClient) -> None:
    response = client.get("/sessions/nobody")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "session_not_found"
    assert_conforms("GET", "/sessions/nobody", 404, response.get_json(), response.headers)


def test_delete_removes_every_document(client: FlaskClient, firestore) -> None:
    from google.cloud import firestore as fs

    chat(client, "x" * 30_000, "doomed")
    for _ in range(20):  # > 512 KiB: sealed chunk documents exist too
        chat(client, "y" * 30_000, "doomed")
    chat(client, "keep me", "kept")
    db = fs.Client()
    assert list(db.collection_group("agent_history_chunks").stream())
    response = client.delete("/sessions/doomed")
    assert response.status_code == 204 and response.data == b""
    assert_conforms("DELETE", "/sessions/doomed", 204, None, response.headers)
    assert client.get("/sessions/doomed").status_code == 404
    assert client.delete("/sessions/doomed").status_code == 404
    remaining = [d.reference.path for d in db.collection_group("agent_history_chunks").stream()]
    remaining += [d.reference.path for d in db.collection("agent_sessions").stream()]
    assert remaining == ["agent_sessions/doomed", "agent_sessions/kept"]
    # What stays of the deleted one is a tombstone: its marks, no content, no owner.
    tombstone = db.collection("agent_sessions").document("doomed").get().to_dict() or {}
    marks = {"commits", "last_commit", "deleted_by", "deleted_generation", "turns", "chunks"}
    assert set(tombstone) <= marks | {"expire_at"}, sorted(tombstone)
    assert tombstone["turns"] == tombstone["chunks"] == 0


def test_known_id_after_expiry_starts_a_new_session(make_client) -> None:
    import time

    client = make_client(session_ttl_seconds=1)
    chat(client, "remember this", "short")
    time.sleep(1.2)
    assert client.get("/sessions/short").status_code == 404  # expired, though not deleted
    again = chat(client, "hello again", "short")
    assert again["new_session"] is True
    assert "your first message" not in again["reply"]
    items = client.get("/sessions/short").get_json()["items"]
    assert [i["content"] for i in items if i.get("role") == "user"] == ["hello again"]
