"""Idempotency-Key: a retried POST /chat never runs the agent twice."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient

from agent.base.clock import utc_now
from agent.store.schema import COLLECTION_GROUPS, IDEMPOTENCY, TTL_FIELD
from agent.turn.idempotency import fingerprint
from local.demo_model import DemoModelServer
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY
from tests.support.openapi_contract import assert_conforms
from tests.support.stores import idempotency_records, service_of, session_expiry


def post(client: FlaskClient, key: str | None, headers: dict[str, str] | None = None, **body):
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["Idempotency-Key"] = key
    return client.post("/chat", json=body, headers=all_headers)


def user_messages(client: FlaskClient, session_id: str, headers=None) -> list[str]:
    items = client.get(f"/sessions/{session_id}", headers=headers or {}).get_json()["items"]
    return [i["content"] for i in items if i.get("role") == "user"]


def test_the_new_collection_group_is_exported_for_ttl_policies() -> None:
    assert IDEMPOTENCY == "agent_idempotency" and IDEMPOTENCY in COLLECTION_GROUPS


def test_a_retry_gets_the_stored_response_without_running_again(
    client: FlaskClient, model: DemoModelServer
) -> None:
    first = post(client, "k-1", message="hello", session_id="i1")
    assert first.status_code == 200
    calls = model.request_count
    again = post(client, "k-1", message="hello", session_id="i1")
    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert_conforms("POST", "/chat", 200, again.get_json(), again.headers)
    assert model.request_count == calls
    assert user_messages(client, "i1") == ["hello"]


def test_a_retry_without_session_id_lands_on_the_same_new_session(client: FlaskClient) -> None:
    first = post(client, "k-2", message="hello")
    again = post(client, "k-2", message="hello")
    assert again.get_json()["session_id"] == first.get_json()["session_id"]
    assert user_messages(client, first.get_json()["session_id"]) == ["hello"]


def test_the_same_key_with_another_body_is_422(client: FlaskClient) -> None:
    assert post(client, "k-3", message="hello", session_id="i3").status_code == 200
    for body in ({"message": "HELLO", "session_id": "i3"}, {"message": "hello"}):
        response = post(client, "k-3", **body)
        assert response.status_code == 422
        assert response.get_json()["error"]["code"] == "idempotency_key_reused"
        assert_conforms("POST", "/chat", 422, response.get_json(), response.headers)
    assert user_messages(client, "i3") == ["hello"]


def test_a_retry_while_the_first_runs_is_409_then_the_stored_response(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(delay_seconds=1.0)
    app = client.application
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app.test_client(), "k-4", message="slow", session_id="i4")
        time.sleep(0.4)
        during = post(app.test_client(), "k-4", message="slow", session_id="i4")
        first_body = first.result().get_json()
    assert during.status_code == 409
    assert during.get_json()["error"]["code"] == "idempotency_key_in_progress"
    assert int(during.headers["Retry-After"]) >= 1
    assert_conforms("POST", "/chat", 409, during.get_json(), during.headers)
    after = post(client, "k-4", message="slow", session_id="i4")
    assert after.status_code == 200 and after.get_json() == first_body
    assert model.request_count == 1
    model.reset()
    assert user_messages(client, "i4") == ["slow"]


def test_a_failed_first_call_stores_nothing_so_the_retry_runs(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(fail_status=500, fail_count=1)
    assert post(client, "k-5", message="try", session_id="i5").status_code == 502
    assert idempotency_records(client) == []
    retry = post(client, "k-5", message="try", session_id="i5")
    assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers
    assert user_messages(client, "i5") == ["try"]


def test_keys_belong_to_their_principal(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(auth_mode="api_key", auth_api_keys=API_KEYS)
    alice = {"X-API-Key": ALICE_KEY}
    bob = {"X-API-Key": BOB_KEY}
    first = post(client, "shared", alice, message="from alice", session_id="ia")
    second = post(client, "shared", bob, message="from bob", session_id="ib")
    assert (first.status_code, second.status_code) == (200, 200)
    assert "Idempotent-Replayed" not in second.headers
    # Bob replaying Alice's exact request runs his own turn: no reply of hers leaks.
    third = post(client, "shared-2", alice, message="x", session_id="ic")
    stolen = post(client, "shared-2", bob, message="x", session_id="ic")
    assert third.status_code == 200
    assert stolen.get_json()["error"]["code"] == "session_id_taken"


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ünïcode"])
def test_a_malformed_key_is_400(client: FlaskClient, model: DemoModelServer, key: str) -> None:
    response = client.post(
        "/chat",
        json={"message": "hi"},
        headers={"Idempotency-Key": key.encode().decode("latin-1")},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert_conforms("POST", "/chat", 400, response.get_json(), response.headers)
    assert model.request_count == 0


def test_the_key_expires_with_the_session(client: FlaskClient) -> None:
    response = post(client, "k-6", message="hello", session_id="i6")
    (record,) = idempotency_records(client)
    assert record[TTL_FIELD] == session_expiry(client, "i6")
    assert record["state"] == "done" and record["owner"] == "local"
    expires = dt.datetime.fromisoformat(response.get_json()["expires_at"].replace("Z", "+00:00"))
    assert record[TTL_FIELD] == expires


def test_deleting_the_session_deletes_its_keys(client: FlaskClient) -> None:
    post(client, "k-7", message="hello", session_id="i7")
    post(client, "k-8", message="again", session_id="i7")
    post(client, "k-9", message="elsewhere", session_id="other")
    assert len(idempotency_records(client)) == 3
    assert client.delete("/sessions/i7").status_code == 204
    assert [r["session_id"] for r in idempotency_records(client)] == ["other"]
    rerun = post(client, "k-7", message="hello", session_id="i7")
    assert rerun.get_json()["new_session"] is True  # ran again: nothing of i7 kept


def test_a_turn_whose_instance_died_runs_once_after_its_claim_lapses(
    client: FlaskClient, model: DemoModelServer
) -> None:
    # The first attempt registered its key and died before committing anything.
    store = service_of(client).idempotency
    until = utc_now() + dt.timedelta(seconds=1)
    store.begin("local", "k-10", fingerprint("hello", "i8"), "i8", until)
    during = post(client, "k-10", message="hello", session_id="i8")
    assert during.get_json()["error"]["code"] == "idempotency_key_in_progress"
    time.sleep(1.1)
    retry = post(client, "k-10", message="hello", session_id="i8")
    assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers
    replay = post(client, "k-10", message="hello", session_id="i8")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert user_messages(client, "i8") == ["hello"]


def test_a_reply_too_large_to_store_fails_the_turn_and_stores_nothing(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(reply_bytes=800 * 1024)
    response = post(client, "k-11", message="big", session_id="i9")
    assert response.status_code == 502
    assert client.get("/sessions/i9").status_code == 404 and idempotency_records(client) == []
    # Without a key the same reply is fine: the limit is the stored response's.
    assert post(client, None, message="big", session_id="i9").status_code == 200
