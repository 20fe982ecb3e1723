"""Human approval of tool calls that act (agent/turn/approvals.py): the run pauses, its
state is kept with the session, and any instance resumes it, once."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agents import Agent
from flask.testing import FlaskClient

from agent.base.clock import utc_now
from agent.store.paused_runs import PausedRun
from agent.turn import approvals
from local.demo_model import DemoModelServer
from local.server import LiveServer as Server
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY, MODEL
from tests.support.openapi_contract import assert_conforms
from tests.support.sse_client import events_of, open_stream, parse_body
from tests.support.stores import service_of


@pytest.fixture
def acting(make_client: Callable[..., FlaskClient], outbox: Path) -> FlaskClient:
    return make_client(outbox_path=str(outbox))


@pytest.fixture
def server_env(store_env: dict[str, str], model: DemoModelServer, outbox: Path) -> dict[str, str]:
    """The environment of a functions-framework server process with the outbox."""
    return (
        os.environ
        | store_env
        | {"OPENAI_BASE_URL": model.base_url, "AGENT_MODEL": MODEL, "AUTH_MODE": "none"}
        | {"OPENAI_API_KEY": "sk-test", "OUTBOX_PATH": str(outbox)}
    )


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


def pause_of(client: FlaskClient, session_id: str, **headers: str) -> str:
    """The id of the session's pause, as ``GET /sessions/<id>`` shows it ("" if none)."""
    response = client.get(f"/sessions/{session_id}", headers=headers)
    return (response.get_json() or {}).get("pause_id") or "" if response.status_code == 200 else ""


def decide(
    client: FlaskClient,
    session_id: str,
    decisions: list[dict],
    pause_id: str | None = None,
    **headers: str,
):
    """Decisions for the session's pause (``pause_id``; None: the current one)."""
    if pause_id is None:
        pause_id = pause_of(client, session_id, **headers) or "p-none"
    return client.post(
        f"/sessions/{session_id}/approvals",
        json={"pause_id": pause_id, "decisions": decisions},
        headers=headers,
    )


def test_pause_then_approve_runs_the_tool_once(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    body = pause(acting, "ap-1")
    [call] = body["pending_approvals"]
    assert call["tool"] == "send_message"
    assert call["arguments"] == '{"text":"hi there","to":"alice"}'  # canonical JSON
    assert sent(outbox) == []  # nothing acted yet
    response = decide(acting, "ap-1", [{"call_id": call["call_id"], "approve": True}])
    assert response.status_code == 200, response.get_json()
    done = response.get_json()
    assert_conforms("POST", "/sessions/{session_id}/approvals", 200, done, response.headers)
    assert done["status"] == "completed"
    assert "sent to alice" in done["reply"]
    # The paused turn reported its model call; the resumed turn reports only its own.
    assert body["usage"]["requests"] == done["usage"]["requests"] == 1
    assert sent(outbox) == [{"to": "alice", "text": "hi there"}]
    session = acting.get("/sessions/ap-1").get_json()
    assert session["pending_approvals"] == []
    [decision] = session["approvals"]
    assert decision["call_id"] == call["call_id"] and decision["approved"] is True
    types = [i.get("role") or i.get("type") for i in session["items"]]
    assert types == ["user", "function_call", "function_call_output", "assistant"]


def test_pause_on_one_server_approve_on_another_process(
    server_env: dict[str, str], model: DemoModelServer, outbox: Path
) -> None:
    first = Server(server_env)
    try:
        status, body, _ = first.call(
            "POST", "/chat", {"message": 'send "from afar" to bob', "session_id": "ap-proc"}
        )
        assert status == 200 and body["status"] == "approval_required", body
    finally:
        first.stop()
    second = Server(server_env)  # another process: nothing of the run is in memory
    try:
        call_id = body["pending_approvals"][0]["call_id"]
        status, done, _ = second.call(
            "POST",
            "/sessions/ap-proc/approvals",
            {"pause_id": body["pause_id"], "decisions": [{"call_id": call_id, "approve": True}]},
        )
        assert status == 200, done
        assert done["status"] == "completed" and "sent to bob" in done["reply"]
    finally:
        second.stop()
    assert sent(outbox) == [{"to": "bob", "text": "from afar"}]


def test_reject_gives_the_model_the_rejection_and_the_run_goes_on(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    call = pause(acting, "ap-rej")["pending_approvals"][0]
    response = decide(
        acting, "ap-rej", [{"call_id": call["call_id"], "approve": False, "reason": "not today"}]
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "completed"
    assert "not sent" in response.get_json()["reply"]
    assert sent(outbox) == []
    tool_messages = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert (
        "rejected" in tool_messages[-1]["content"] and "not today" in tool_messages[-1]["content"]
    )
    [decision] = acting.get("/sessions/ap-rej").get_json()["approvals"]
    assert decision["approved"] is False and decision["reason"] == "not today"


def test_chat_while_pending_is_409_listing_the_calls(acting: FlaskClient) -> None:
    call = pause(acting, "ap-409")["pending_approvals"][0]
    response = acting.post("/chat", json={"message": "hello?", "session_id": "ap-409"})
    assert response.status_code == 409
    assert_conforms("POST", "/chat", 409, response.get_json(), response.headers)
    error = response.get_json()["error"]
    assert error["code"] == "approval_pending"
    assert error["pending_call_ids"] == [call["call_id"]]
    # Nothing changed: the pause is still there, and deciding it still works.
    assert (
        decide(acting, "ap-409", [{"call_id": call["call_id"], "approve": True}]).status_code == 200
    )


def test_bad_decisions_are_refused_and_change_nothing(acting: FlaskClient, outbox: Path) -> None:
    call_id = pause(acting, "ap-bad")["pending_approvals"][0]["call_id"]
    cases = [
        ([], 400, "invalid_request"),
        ([{"call_id": call_id}], 400, "invalid_request"),
        ([{"call_id": "call_nope", "approve": True}], 409, "approval_not_pending"),
        (
            [{"call_id": call_id, "approve": True}, {"call_id": call_id, "approve": False}],
            400,
            "decisions_invalid",
        ),
    ]
    for decisions, status, code in cases:
        response = decide(acting, "ap-bad", decisions)
        assert response.status_code == status, (decisions, response.get_json())
        assert response.get_json()["error"]["code"] == code
        path = "/sessions/{session_id}/approvals"
        assert_conforms("POST", path, status, response.get_json(), response.headers)
    assert sent(outbox) == []
    assert decide(acting, "ap-bad", [{"call_id": call_id, "approve": True}]).status_code == 200
    again = decide(acting, "ap-bad", [{"call_id": call_id, "approve": True}])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "approval_not_pending"
    assert len(sent(outbox)) == 1


def test_every_pending_call_needs_a_decision(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    # Two gated calls in one model response: calculate is gated by the setting here.
    client = make_client(approval_required_tools="calculate")
    body = pause(client, "ap-two", "what is 6 * 7?")
    [call] = body["pending_approvals"]
    assert call["tool"] == "calculate"
    response = decide(client, "ap-two", [{"call_id": "call_other", "approve": True}])
    assert response.status_code == 409
    done = decide(client, "ap-two", [{"call_id": call["call_id"], "approve": True}])
    assert done.status_code == 200 and "42" in done.get_json()["reply"]


def test_two_concurrent_approvals_run_the_tool_once(
    make_client: Callable[..., FlaskClient], outbox: Path, model: DemoModelServer
) -> None:
    instances = [make_client(outbox_path=str(outbox)) for _ in range(2)]
    paused = pause(instances[0], "ap-race")
    call_id = paused["pending_approvals"][0]["call_id"]
    model.control(delay_seconds=0.5)  # both requests are in flight together
    decision = [{"call_id": call_id, "approve": True}]
    with ThreadPoolExecutor(2) as pool:
        responses = list(
            pool.map(lambda c: decide(c, "ap-race", decision, paused["pause_id"]), instances)
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409], [r.get_json() for r in responses]
    loser = next(r for r in responses if r.status_code == 409).get_json()["error"]["code"]
    assert loser in ("session_busy", "approval_not_pending")
    assert sent(outbox) == [{"to": "alice", "text": "hi there"}]


def test_a_retried_approval_with_the_same_key_replays(acting: FlaskClient, outbox: Path) -> None:
    paused = pause(acting, "ap-key")
    call_id, pause_id = paused["pending_approvals"][0]["call_id"], paused["pause_id"]
    decision = [{"call_id": call_id, "approve": True}]
    first = decide(acting, "ap-key", decision, pause_id, **{"Idempotency-Key": "k-1"})
    second = decide(acting, "ap-key", decision, pause_id, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 200
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.get_json() == first.get_json()
    assert len(sent(outbox)) == 1


def test_another_principal_gets_404_and_decides_nothing(
    make_client: Callable[..., FlaskClient], outbox: Path
) -> None:
    client = make_client(auth_mode="api_key", auth_api_keys=API_KEYS, outbox_path=str(outbox))
    alice, bob = {"X-API-Key": ALICE_KEY}, {"X-API-Key": BOB_KEY}
    response = client.post(
        "/chat", json={"message": 'send "x" to carol', "session_id": "ap-own"}, headers=alice
    )
    call_id = response.get_json()["pending_approvals"][0]["call_id"]
    foreign = decide(client, "ap-own", [{"call_id": call_id, "approve": True}], **bob)
    absent = decide(client, "ap-never", [{"call_id": call_id, "approve": True}], **bob)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.get_json() == absent.get_json()
    assert sent(outbox) == []
    assert client.get("/sessions/ap-own", headers=alice).get_json()["pending_approvals"]
    mine = decide(client, "ap-own", [{"call_id": call_id, "approve": True}], **alice)
    assert mine.status_code == 200
    assert mine.get_json()["status"] == "completed"
    [decision] = client.get("/sessions/ap-own", headers=alice).get_json()["approvals"]
    assert decision["by"] == "alice"


def test_a_changed_agent_makes_the_approval_stale(
    make_client: Callable[..., FlaskClient], outbox: Path, model: DemoModelServer
) -> None:
    before = make_client(outbox_path=str(outbox))
    call_id = pause(before, "ap-stale")["pending_approvals"][0]["call_id"]
    after = make_client(outbox_path=str(outbox), agent_instructions="You are terse.")
    response = decide(after, "ap-stale", [{"call_id": call_id, "approve": True}])
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "approval_stale"
    assert sent(outbox) == []
    session = after.get("/sessions/ap-stale").get_json()
    assert session["pending_approvals"] == []
    assert session["items"][0]["content"] == 'send "hi there" to alice'  # kept
    assert "dropped" in session["items"][-1]["content"]
    # The history stays valid for the model: the session goes on.
    assert after.post("/chat", json={"message": "ok", "session_id": "ap-stale"}).status_code == 200


def test_the_paused_run_expires_with_its_session(
    make_client: Callable[..., FlaskClient], outbox: Path
) -> None:
    client = make_client(outbox_path=str(outbox), session_ttl_seconds="1")
    call_id = pause(client, "ap-ttl")["pending_approvals"][0]["call_id"]
    time.sleep(1.5)
    response = decide(client, "ap-ttl", [{"call_id": call_id, "approve": True}])
    assert response.status_code == 404
    assert sent(outbox) == []
    fresh = client.post("/chat", json={"message": "hello", "session_id": "ap-ttl"})
    assert fresh.status_code == 200 and fresh.get_json()["new_session"] is True


def test_a_failed_resume_stores_nothing_and_a_retry_does_not_run_the_tool_again(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    call_id = pause(acting, "ap-fail")["pending_approvals"][0]["call_id"]
    decision = [{"call_id": call_id, "approve": True}]
    model.control(fail_status=500, fail_count=1)  # the model call after the tool fails
    failed = decide(acting, "ap-fail", decision)
    assert failed.status_code == 502
    assert len(sent(outbox)) == 1  # the tool had run
    session = acting.get("/sessions/ap-fail").get_json()
    assert [c["call_id"] for c in session["pending_approvals"]] == [call_id]  # intact
    assert session["approvals"] == []
    retried = decide(acting, "ap-fail", decision)
    assert retried.status_code == 200, retried.get_json()
    assert "sent to alice" in retried.get_json()["reply"]  # the recorded output
    assert len(sent(outbox)) == 1  # not run twice


def test_a_call_an_earlier_attempt_began_is_not_run_again(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    call_id = pause(acting, "ap-died")["pending_approvals"][0]["call_id"]
    # An instance that began the call and died before it finished left this record.
    service = service_of(acting)
    generation = service.store.current_generation("ap-died", utc_now())
    assert generation is not None
    paused = service.store.paused_run("ap-died", utc_now(), "local")
    assert paused is not None
    approved = approvals.approved(paused, paused.pending[0])
    assert service.tool_runs.start("ap-died", generation, approved, utc_now()) is None
    response = decide(acting, "ap-died", [{"call_id": call_id, "approve": True}])
    assert response.status_code == 200
    assert sent(outbox) == []
    tool_messages = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert "was not run again" in tool_messages[-1]["content"]


def test_firestore_down_at_resume_is_503_and_the_pause_survives(
    firestore: object, make_client: Callable[..., FlaskClient], outbox: Path
) -> None:
    client = make_client(outbox_path=str(outbox))
    call_id = pause(client, "ap-down")["pending_approvals"][0]["call_id"]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    # The Firestore client takes the emulator's address from the environment when built.
    live = os.environ["FIRESTORE_EMULATOR_HOST"]
    os.environ["FIRESTORE_EMULATOR_HOST"] = dead
    try:
        down = make_client(
            outbox_path=str(outbox), firestore_emulator_host=dead, firestore_timeout_seconds="1"
        )
        response = decide(down, "ap-down", [{"call_id": call_id, "approve": True}])
    finally:
        os.environ["FIRESTORE_EMULATOR_HOST"] = live
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "storage_unavailable"
    assert sent(outbox) == []
    session = client.get("/sessions/ap-down").get_json()
    assert [c["call_id"] for c in session["pending_approvals"]] == [call_id]
    assert decide(client, "ap-down", [{"call_id": call_id, "approve": True}]).status_code == 200
    assert len(sent(outbox)) == 1


def test_streamed_pause_and_resume_match_the_json_path(
    make_client: Callable[..., FlaskClient], outbox: Path
) -> None:
    client = make_client(outbox_path=str(outbox))
    plain = pause(client, "ap-json")
    streamed = client.post(
        "/chat",
        json={"message": 'send "hi there" to alice', "session_id": "ap-sse", "stream": True},
    )
    events = parse_body(streamed.get_data())
    names = [event.name for event in events]
    assert names[-2:] == ["approval_required", "done"], names
    required, done = events[-2].data, events[-1].data
    assert required["pending_approvals"] == done["pending_approvals"]
    assert required["pause_id"] == done["pause_id"]
    assert comparable(done) == comparable(plain)
    call_id = done["pending_approvals"][0]["call_id"]
    resumed = client.post(
        "/sessions/ap-sse/approvals",
        json={
            "pause_id": done["pause_id"],
            "decisions": [{"call_id": call_id, "approve": True}],
            "stream": True,
        },
    )
    events = parse_body(resumed.get_data())
    assert [event.name for event in events][-1] == "done"
    assert "tool_result" in [event.name for event in events]
    json_done = decide(
        client, "ap-json", [{"call_id": plain["pending_approvals"][0]["call_id"], "approve": True}]
    )
    assert comparable(events[-1].data) == comparable(json_done.get_json())
    assert len(sent(outbox)) == 2


def comparable(body: dict) -> tuple:
    """What must match between two answers to the same kind of request."""
    return (
        body["status"],
        body["reply"],
        [(c["tool"], c["arguments"]) for c in body.get("pending_approvals", [])],
        sorted(body),
    )


def test_approval_required_tools_gates_any_tool(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    open_client = make_client()
    assert "84" in open_client.post("/chat", json={"message": "12 * (3 + 4)"}).get_json()["reply"]
    gated = make_client(approval_required_tools="*")
    body = gated.post("/chat", json={"message": "12 * (3 + 4)"}).get_json()
    assert body["status"] == "approval_required"
    assert body["pending_approvals"][0]["tool"] == "calculate"


def test_deleting_the_session_deletes_its_tool_runs(acting: FlaskClient) -> None:
    call_id = pause(acting, "ap-del")["pending_approvals"][0]["call_id"]
    service = service_of(acting)
    generation = service.store.current_generation("ap-del", utc_now())
    assert generation is not None
    paused = service.store.paused_run("ap-del", utc_now(), "local")
    assert paused is not None
    approved = approvals.approved(paused, paused.pending[0])
    assert decide(acting, "ap-del", [{"call_id": call_id, "approve": True}]).status_code == 200
    ran = service.tool_runs.start("ap-del", generation, approved, utc_now())
    assert ran is not None and ran.output == "sent to alice"  # recorded, with its output
    assert acting.delete("/sessions/ap-del").status_code == 204
    assert service.tool_runs.start("ap-del", generation, approved, utc_now()) is None  # gone


def test_a_resume_counts_against_the_budget_and_its_cost_once(
    make_client: Callable[..., FlaskClient], outbox: Path, model: DemoModelServer
) -> None:
    prices = json.dumps({MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}})
    roomy = make_client(
        outbox_path=str(outbox), model_prices=prices, budget_usd_per_principal_per_day="100"
    )
    body = pause(roomy, "ap-budget")
    call_id = body["pending_approvals"][0]["call_id"]
    done = decide(roomy, "ap-budget", [{"call_id": call_id, "approve": True}]).get_json()
    totals = roomy.get("/sessions/ap-budget").get_json()["usage"]
    # The session's totals are the two answers' usage: the paused part counted once.
    assert totals["requests"] == body["usage"]["requests"] + done["usage"]["requests"] == 2
    assert totals["cost_usd"] == pytest.approx(
        body["usage"]["cost_usd"] + done["usage"]["cost_usd"]
    )
    # Past the budget, a resume is refused before anything runs, and the pause waits.
    # Room for one more paused turn, not for its resume as well.
    budget = totals["cost_usd"] + body["usage"]["cost_usd"] / 2
    tight = make_client(
        outbox_path=str(outbox), model_prices=prices, budget_usd_per_principal_per_day=str(budget)
    )
    call_id = pause(tight, "ap-budget-2")["pending_approvals"][0]["call_id"]
    calls = model.request_count
    refused = decide(tight, "ap-budget-2", [{"call_id": call_id, "approve": True}])
    assert refused.status_code == 429, refused.get_json()
    assert refused.get_json()["error"]["code"] == "budget_exceeded"
    assert model.request_count == calls and len(sent(outbox)) == 1
    assert tight.get("/sessions/ap-budget-2").get_json()["pending_approvals"]


def test_a_client_that_leaves_a_streamed_resume_stores_nothing_and_may_decide_again(
    server_env: dict[str, str], model: DemoModelServer, outbox: Path
) -> None:
    server = Server(server_env)
    try:
        status, body, _ = server.call(
            "POST", "/chat", {"message": 'send "bye" to dan', "session_id": "ap-gone"}
        )
        assert status == 200 and body["status"] == "approval_required", body
        decision = [{"call_id": body["pending_approvals"][0]["call_id"], "approve": True}]
        named = {"pause_id": body["pause_id"], "decisions": decision}
        model.control(stream_chunk_delay_seconds=0.5)  # the answer after the tool is slow
        connection, response = open_stream(
            server.port, named | {"stream": True}, path="/sessions/ap-gone/approvals"
        )
        seen = [next(events_of(response)).name for _ in range(2)]
        assert seen == ["tool_result", "delta"], seen  # the tool ran; the answer is under way
        connection.close()  # the user closed the tab
        model.reset()
        # Issue 20 item 4: now a rejection would log "not performed" of a sent message.
        rejection = named | {"decisions": [decision[0] | {"approve": False}]}
        deadline = time.monotonic() + 10
        while True:  # the server notices at its next write and releases the session
            status, refused, _ = server.call("POST", "/sessions/ap-gone/approvals", rejection)
            if status != 409 or refused["error"]["code"] != "session_busy":
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status == 409 and refused["error"]["code"] == "approval_conflict", refused
        status, done, _ = server.call("POST", "/sessions/ap-gone/approvals", named)
        assert status == 200, done
        assert "sent to dan" in done["reply"]  # the recorded result, not a second run
    finally:
        server.stop()
    assert sent(outbox) == [{"to": "dan", "text": "bye"}]


# -- issue 20: approvals whose record is the truth ------------------------------------


def test_decisions_name_the_pause_they_decide(acting: FlaskClient, outbox: Path) -> None:
    """Item 17: the pause's id is returned and must be named, so a decision made for one
    pause (or one life of the session) never applies to another."""
    body = pause(acting, "ap-pid")
    pause_id, call_id = body["pause_id"], body["pending_approvals"][0]["call_id"]
    assert pause_of(acting, "ap-pid") == pause_id
    busy = acting.post("/chat", json={"message": "hello?", "session_id": "ap-pid"})
    assert busy.get_json()["error"]["pause_id"] == pause_id
    assert_conforms("POST", "/chat", 409, busy.get_json(), busy.headers)
    path = "/sessions/ap-pid/approvals"
    unnamed = acting.post(path, json={"decisions": [{"call_id": call_id, "approve": True}]})
    assert unnamed.status_code == 400, unnamed.get_json()
    assert_conforms("POST", "/sessions/{session_id}/approvals", 400, unnamed.get_json())
    other = decide(acting, "ap-pid", [{"call_id": call_id, "approve": True}], "another-pause")
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "approval_not_pending"
    assert sent(outbox) == []
    done = decide(acting, "ap-pid", [{"call_id": call_id, "approve": True}], pause_id)
    assert done.status_code == 200, done.get_json()
    assert "pause_id" not in done.get_json()  # completed: no pause
    [decision] = acting.get("/sessions/ap-pid").get_json()["approvals"]
    assert decision["pause_id"] == pause_id
    session = acting.get("/sessions/ap-pid").get_json()
    assert session["pause_id"] is None
    assert_conforms("GET", "/sessions/{session_id}", 200, session)
    # The same call id paused again later is another pause: the old id decides nothing.
    again = pause(acting, "ap-pid", 'send "more" to alice')
    assert again["pause_id"] != pause_id
    stale = decide(acting, "ap-pid", [{"call_id": call_id, "approve": True}], pause_id)
    assert stale.status_code == 409 and len(sent(outbox)) == 1


def test_a_duplicate_key_in_the_arguments_is_refused(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    """Item 5: a page shows the first "to", a tool gets the last; such a call is never
    put to a person, and nothing is stored."""
    model.control(call_arguments='{"to": "alice", "text": "hi", "to": "mallory@example.com"}')
    response = acting.post("/chat", json={"message": 'send "hi" to alice', "session_id": "ap-dup"})
    assert response.status_code == 502, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "approval_calls_invalid" and "mallory" not in json.dumps(error)
    assert_conforms("POST", "/chat", 502, response.get_json(), response.headers)
    assert acting.get("/sessions/ap-dup").status_code == 404  # nothing stored
    assert sent(outbox) == []


@pytest.mark.parametrize(
    "arguments",
    ['{"to": "alice"}', '{"to": "alice", "text": "hi", "cc": "eve"}', '{"to": 7, "text": "hi"}'],
    ids=["missing", "extra", "wrong-type"],
)
def test_arguments_outside_the_tools_schema_are_refused(
    acting: FlaskClient, outbox: Path, model: DemoModelServer, arguments: str
) -> None:
    model.control(call_arguments=arguments)
    response = acting.post("/chat", json={"message": 'send "hi" to bob', "session_id": "ap-sch"})
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_calls_invalid"
    assert sent(outbox) == []


def test_what_is_shown_is_canonical_with_hidden_characters_escaped_and_is_what_runs(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    """Item 5: canonical JSON, invisible and bidirectional characters escaped (still the
    same JSON value), and the tool gets exactly that value."""
    tricky = "pay\u202eevil\u200b"
    model.control(call_arguments=json.dumps({"to": "bob", "text": tricky}, indent=2))
    body = pause(acting, "ap-canon")
    [call] = body["pending_approvals"]
    assert call["arguments"] == '{"text":"pay\\u202eevil\\u200b","to":"bob"}'
    assert json.loads(call["arguments"]) == {"to": "bob", "text": tricky}
    assert acting.get("/sessions/ap-canon").get_json()["pending_approvals"] == [call]
    model.reset()
    done = decide(acting, "ap-canon", [{"call_id": call["call_id"], "approve": True}])
    assert done.status_code == 200, done.get_json()
    assert sent(outbox) == [{"to": "bob", "text": tricky}]


def test_the_guard_runs_only_the_approved_call_with_the_approved_arguments(
    acting: FlaskClient,
) -> None:
    """Item 5: whatever the run's state says at resume, the guard runs a call only as it
    was shown: the pause's call id, tool and canonical arguments."""
    paused_body = pause(acting, "ap-guard")
    service = service_of(acting)
    paused = service.store.paused_run("ap-guard", utc_now(), "local")
    generation = service.store.current_generation("ap-guard", utc_now())
    assert paused is not None and generation is not None
    guard = approvals.StoreGuard(service.tool_runs, "ap-guard", generation, paused)
    call_id = paused_body["pending_approvals"][0]["call_id"]
    ran: list[str] = []

    async def invoke(arguments: str) -> str:
        ran.append(arguments)
        return "sent"

    def run(call: str, tool: str, arguments: str) -> object:
        return asyncio.run(guard.run(call, tool, arguments, invoke))

    refused = approvals.NOT_APPROVED_OUTPUT
    assert run(call_id, "send_message", '{"to": "mallory", "text": "hi there"}') == refused
    assert run(call_id, "calculate", '{"to": "alice", "text": "hi there"}') == refused
    assert run("call_other", "send_message", '{"to": "alice", "text": "hi there"}') == refused
    dup = '{"to": "alice", "text": "hi there", "to": "alice"}'
    assert run(call_id, "send_message", dup) == refused
    assert ran == []
    assert run(call_id, "send_message", '{ "to": "alice", "text": "hi there" }') == "sent"
    assert ran == ['{"text":"hi there","to":"alice"}']  # the canonical text, as shown


def test_a_reused_call_id_is_refused_and_ids_with_a_slash_work(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    """Item 6: a compatible server that reuses a call id must not make an approved call
    to bob answer "sent to alice" without sending; a '/' in an id is a valid key."""
    model.control(call_id="call/1")
    first = pause(acting, "ap-reuse", 'send "hi" to alice')
    assert first["pending_approvals"][0]["call_id"] == "call/1"
    done = decide(acting, "ap-reuse", [{"call_id": "call/1", "approve": True}])
    assert done.status_code == 200, done.get_json()
    assert sent(outbox) == [{"to": "alice", "text": "hi"}]
    before = acting.get("/sessions/ap-reuse").get_json()
    response = acting.post("/chat", json={"message": 'send "hi" to bob', "session_id": "ap-reuse"})
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_calls_invalid"
    assert acting.get("/sessions/ap-reuse").get_json() == before  # nothing stored
    assert sent(outbox) == [{"to": "alice", "text": "hi"}]


def test_two_calls_sharing_an_id_in_one_pause_are_refused(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    model.control(call_id="call_same", call_copies=2)
    response = acting.post("/chat", json={"message": 'send "hi" to bob', "session_id": "ap-twin"})
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_calls_invalid"


def test_a_pause_with_more_calls_than_one_request_can_decide_is_refused(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    """Item 7: decisions come in one request of at most 64; a pause of 65 calls would
    lock the session until it expired, so it is refused and nothing is stored."""
    model.control(call_copies=approvals.MAX_PENDING_CALLS + 1)
    response = acting.post("/chat", json={"message": 'send "hi" to bob', "session_id": "ap-65"})
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_calls_invalid"
    assert acting.get("/sessions/ap-65").status_code == 404
    model.control(call_copies=approvals.MAX_PENDING_CALLS)
    body = pause(acting, "ap-64", 'send "hi" to bob')
    calls = body["pending_approvals"]
    assert len(calls) == approvals.MAX_PENDING_CALLS
    model.reset()
    decisions = [{"call_id": c["call_id"], "approve": n == 0} for n, c in enumerate(calls)]
    done = decide(acting, "ap-64", decisions)
    assert done.status_code == 200, done.get_json()
    assert sent(outbox) == [{"to": "bob", "text": "hi"}]


def test_rejecting_a_call_that_already_ran_is_a_conflict(
    acting: FlaskClient, outbox: Path, model: DemoModelServer
) -> None:
    """Item 4: an approval whose resume failed after the tool ran, then a rejection: the
    record must not say "not performed" of a message that was sent."""
    call_id = pause(acting, "ap-conf")["pending_approvals"][0]["call_id"]
    model.control(fail_status=500, fail_count=1)  # the model call after the tool fails
    failed = decide(acting, "ap-conf", [{"call_id": call_id, "approve": True}])
    assert failed.status_code == 502 and len(sent(outbox)) == 1
    rejected = decide(acting, "ap-conf", [{"call_id": call_id, "approve": False}])
    assert rejected.status_code == 409, rejected.get_json()
    error = rejected.get_json()["error"]
    assert error["code"] == "approval_conflict" and error["ran_call_ids"] == [call_id]
    path = "/sessions/{session_id}/approvals"
    assert_conforms("POST", path, 409, rejected.get_json(), rejected.headers)
    session = acting.get("/sessions/ap-conf").get_json()
    assert session["approvals"] == [] and session["pending_approvals"]  # unchanged
    approved = decide(acting, "ap-conf", [{"call_id": call_id, "approve": True}])
    assert approved.status_code == 200 and "sent to alice" in approved.get_json()["reply"]
    assert len(sent(outbox)) == 1


def test_a_stale_drop_after_the_tool_ran_records_its_output(
    make_client: Callable[..., FlaskClient], outbox: Path, model: DemoModelServer
) -> None:
    """Item 4: the agent changed after an approved call ran (its resume failed): the
    dropped pause answers that call with what it returned, not "not run"."""
    before = make_client(outbox_path=str(outbox))
    call_id = pause(before, "ap-stale-ran")["pending_approvals"][0]["call_id"]
    model.control(fail_status=500, fail_count=1)
    failed = decide(before, "ap-stale-ran", [{"call_id": call_id, "approve": True}])
    assert failed.status_code == 502
    assert len(sent(outbox)) == 1
    after = make_client(outbox_path=str(outbox), agent_instructions="You are terse.")
    rejected = decide(after, "ap-stale-ran", [{"call_id": call_id, "approve": False}])
    assert rejected.get_json()["error"]["code"] == "approval_conflict"
    response = decide(after, "ap-stale-ran", [{"call_id": call_id, "approve": True}])
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "approval_stale"
    items = after.get("/sessions/ap-stale-ran").get_json()["items"]
    [output] = [i for i in items if i.get("type") == "function_call_output"]
    assert output["output"] == "sent to alice"
    assert len(sent(outbox)) == 1


def test_a_paused_state_of_an_unsupported_schema_version_is_dropped_as_stale(
    acting: FlaskClient, outbox: Path
) -> None:
    """Issue 25 item 2: a state written by a newer SDK (here: a version this SDK does not
    know) drops the pause cleanly instead of a 500 that keeps the session locked."""
    call_id = pause(acting, "ap-schema")["pending_approvals"][0]["call_id"]
    store = service_of(acting).store
    now = utc_now()
    paused = store.paused_run("ap-schema", now, "local")
    assert paused is not None
    until = now + dt.timedelta(seconds=30)
    claim = store.claim("ap-schema", now, until, "local", resume=paused.pause_id)
    assert claim.paused is not None
    state = json.loads(claim.paused.state_json())
    state["$schemaVersion"] = "99.0"
    newer = dataclasses.replace(
        claim.paused, state=PausedRun.compress(json.dumps(state)), attempts=0
    )
    store.commit(claim, [], now, count_turn=False, paused=newer)
    response = decide(acting, "ap-schema", [{"call_id": call_id, "approve": True}])
    assert response.status_code == 409, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_stale"
    assert sent(outbox) == []
    session = acting.get("/sessions/ap-schema").get_json()
    assert session["pending_approvals"] == [] and "dropped" in session["items"][-1]["content"]
    again = acting.post("/chat", json={"message": "ok", "session_id": "ap-schema"})
    assert again.status_code == 200


def test_the_fingerprint_includes_the_state_schema_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = Agent(name="a", instructions="x")
    today = approvals.fingerprint(agent, MODEL)
    monkeypatch.setattr(approvals, "CURRENT_SCHEMA_VERSION", "0.1")
    assert approvals.fingerprint(agent, MODEL) != today
