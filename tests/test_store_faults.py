"""Correct when the network lies: faults between one server and the emulators.

A loopback fault proxy (``tests/support/fault_proxy.py``) sits between one server and
the Firestore (or Cloud Storage) emulator and breaks a connection when it sees bytes the
test put in a request body: a unique word in the user message is raw in the turn's
Commit request, a chunk's path in a chunk read, a session's prefix in a listing. A
second server or client talks to the emulators directly. Each test is one of issue 15's
cases (A-F) or issue 10's items 5 and 8; each failed on the code before the change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs

from agent.store.history import HistoryStore
from agent.store.schema import CHUNKS, IDEMPOTENCY, SESSIONS, TTL_FIELD
from local.demo_model import DemoModelServer
from local.emulators import StorageEmulator
from local.server import LiveServer
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY
from tests.support.fault_fixtures import users
from tests.support.fault_proxy import FaultProxy
from tests.support.openapi_contract import assert_conforms

Build = Callable[..., FlaskClient]


def marker() -> str:
    """A word that appears in exactly one request the test is after."""
    return "mark" + secrets.token_hex(8)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


@pytest.fixture
def through(make_client: Build, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Build:
    """Builds an in-process app whose Firestore client goes through the proxy (the
    client reads FIRESTORE_EMULATOR_HOST when it is made)."""

    def build(**overrides: str) -> FlaskClient:
        with monkeypatch.context() as patch:
            patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
            return make_client(**overrides)

    return build


@pytest.fixture
def live_servers() -> Iterator[Callable[[dict[str, str]], LiveServer]]:
    """Starts functions-framework servers; stops them all at the end."""
    started: list[LiveServer] = []

    def start(env: dict[str, str]) -> LiveServer:
        server = LiveServer(dict(os.environ) | env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


# -- A. A commit whose outcome is unknown ------------------------------------------------


def test_a_commit_whose_reply_is_lost_to_a_reset_is_200_and_its_file_stays(
    through: Build,
    make_client: Build,
    proxy: FaultProxy,
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    server, direct = through(**results_env), make_client(**results_env)
    word = marker()
    model.control(reply_bytes=300_000)
    rule = proxy.arm(word, "reset")  # the commit lands; its reply never arrives
    response = server.post("/chat", json={"message": f"report {word}", "session_id": "a1"})
    assert rule.fired.is_set()
    assert response.status_code == 200, response.get_json()
    result = response.get_json()["result"]
    assert hashlib.sha256(fetch(result["url"])).hexdigest() == result["sha256"]
    assert users(direct, "a1") == [f"report {word}"]  # stored once
    resigned = direct.get(f"/sessions/a1/results/{result['turn_id']}")
    assert resigned.status_code == 200
    assert storage.object_names() == [f"results/a1/{result['turn_id']}.md"]


def test_a_commit_whose_reply_is_held_past_its_timeout_is_200_and_its_key_replays(
    through: Build,
    make_client: Build,
    proxy: FaultProxy,
    results_env: dict[str, str],
    model: DemoModelServer,
) -> None:
    server = through(**results_env, firestore_timeout_seconds="2")
    direct = make_client(**results_env)
    word = marker()
    model.control(reply_bytes=300_000)
    proxy.arm(word, "hold_reply", seconds=3)  # past the commit's 2 s, then delivered
    body = {"message": f"report {word}", "session_id": "a2"}
    headers = {"Idempotency-Key": "key-a2"}
    response = server.post("/chat", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()["result"]
    calls = model.request_count
    replay = direct.post("/chat", json=body, headers=headers)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["result"]["url"] == result["url"]
    assert hashlib.sha256(fetch(result["url"])).hexdigest() == result["sha256"]  # not dead
    assert model.request_count == calls and users(direct, "a2") == [body["message"]]


def test_a_commit_that_never_arrives_is_503_and_not_stored_and_its_file_goes(
    through: Build,
    make_client: Build,
    proxy: FaultProxy,
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    server = through(**results_env, firestore_timeout_seconds="2")
    direct = make_client(**results_env)
    word = marker()
    model.control(reply_bytes=300_000)
    # The commit is held, then its connection cut: it never reaches Firestore. The turn
    # finds that out (its claim is still held: fenced) once the client reconnects.
    proxy.arm(word, "hold_request", seconds=3, then="cut")
    body = {"message": f"report {word}", "session_id": "a3"}
    response = server.post("/chat", json=body)
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "storage_unavailable"
    assert_conforms("POST", "/chat", 503, response.get_json(), response.headers)
    assert users(direct, "a3") == [] and storage.object_names() == []
    retry = direct.post("/chat", json=body)  # the claim was released by the fence
    assert retry.status_code == 200, retry.get_json()
    assert users(direct, "a3") == [body["message"]]


# -- E. A commit that cannot land in time ------------------------------------------------


def test_a_commit_held_past_the_deadline_answers_before_the_platform_timeout(
    live_servers: Callable[[dict[str, str]], LiveServer],
    settings_env: dict[str, str],
    make_client: Build,
    proxy: FaultProxy,
    model: DemoModelServer,
) -> None:
    server = live_servers(
        settings_env
        | {
            "FIRESTORE_EMULATOR_HOST": proxy.host,
            "FUNCTION_TIMEOUT_SECONDS": "10",
            "DEADLINE_MARGIN_SECONDS": "2",
            "FIRESTORE_TIMEOUT_SECONDS": "5",
        }
    )
    direct = make_client()
    word = marker()
    model.control(delay_seconds=5.5)  # the run ends about 5.6 s in
    rule = proxy.arm(word, "hold_request", seconds=4.5)  # then the commit takes 4.5 s
    started = time.monotonic()
    status, body, headers = server.call("POST", "/chat", {"message": word, "session_id": "e1"})
    elapsed = time.monotonic() - started
    print(f"answered {status} after {elapsed:.2f} s")
    assert rule.fired.is_set()
    assert elapsed < 10.0, (status, elapsed)  # the platform would have cut it at 10 s
    # Its outcome could not be found out in time: 503, and nothing is deleted.
    assert status == 503 and body["error"]["code"] == "storage_unavailable", body
    assert_conforms("POST", "/chat", 503, body, headers)
    model.reset()
    time.sleep(max(0.0, rule.fired_at + 5.0 - time.monotonic()))  # the commit arrives
    assert users(direct, "e1") in ([], [word])  # stored at most once


# -- B. DELETE cleans up only the life it deleted -----------------------------------------


def test_a_delete_whose_clean_up_is_held_spares_the_next_life_of_the_id(
    through: Build,
    make_client: Build,
    proxy: FaultProxy,
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    deleter = through(**results_env, firestore_timeout_seconds="8")
    direct = make_client(**results_env)
    model.control(reply_bytes=300_000)
    first = {"message": "first life", "session_id": "b1"}
    assert direct.post("/chat", json=first, headers={"Idempotency-Key": "k1"}).status_code == 200
    # The delete's commit lands, but its reply is held: the clean-up that follows it
    # waits while a new life of the id begins, with a file and a key of its own.
    rule = proxy.arm("agent_sessions/b1", "hold_reply", seconds=3, skip=1)  # skip the read
    thread, out = in_thread(lambda: deleter.delete("/sessions/b1"))
    assert rule.fired.wait(15)
    time.sleep(0.3)  # the delete's write was forwarded as the rule fired: let it land
    body = {"message": "second life", "session_id": "b1"}
    new = direct.post("/chat", json=body, headers={"Idempotency-Key": "k2"})
    assert new.status_code == 200 and new.get_json()["new_session"] is True
    thread.join(30)
    assert out[0].status_code == 204, out[0].get_json()
    result = new.get_json()["result"]
    # The new life's file and key survive; the old life's are gone.
    assert storage.object_names() == [f"results/b1/{result['turn_id']}.md"]
    assert direct.get(f"/sessions/b1/results/{result['turn_id']}").status_code == 200
    calls = model.request_count
    replay = direct.post("/chat", json=body, headers={"Idempotency-Key": "k2"})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert model.request_count == calls
    keys = [s.to_dict() for s in fs.Client().collection(IDEMPOTENCY).stream()]
    assert [k["response"]["reply"] for k in keys] == [new.get_json()["reply"]]


def test_an_upload_that_lands_after_its_turn_gave_up_is_swept_by_delete(
    make_client: Build,
    settings_env: dict[str, str],
    live_servers: Callable[[dict[str, str]], LiveServer],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    direct = make_client(**results_env)
    word = marker()
    model.control(reply_bytes=300_000)
    with FaultProxy(storage.url.removeprefix("http://")) as storage_proxy:
        server = live_servers(
            results_env
            | {"STORAGE_EMULATOR_HOST": storage_proxy.url, "STORAGE_TIMEOUT_SECONDS": "1"}
        )
        # The upload reaches the bucket only after the turn stopped waiting for it.
        rule = storage_proxy.arm(word, "hold_request", seconds=2.5)
        status, body, _ = server.call("POST", "/chat", {"message": word, "session_id": "o1"})
        assert status == 200 and body["warnings"][0]["code"] == "result_not_offloaded"
        time.sleep(max(0.0, rule.fired_at + 3.5 - time.monotonic()))
    (orphan,) = storage.object_names()  # the late upload, named under its session
    assert orphan.startswith("results/o1/")
    assert direct.delete("/sessions/o1").status_code == 204
    assert storage.object_names() == []


# -- C. A running key outlives its turn ------------------------------------------------


def test_a_running_key_with_a_ttl_shorter_than_its_turn_runs_the_agent_once(
    make_client: Build, model: DemoModelServer
) -> None:
    client = make_client(session_ttl_seconds="2")
    model.control(delay_seconds=4)
    app = client.application
    headers = {"Idempotency-Key": "k-c"}
    first, out = in_thread(
        lambda: app.test_client().post("/chat", json={"message": "slow"}, headers=headers)
    )
    time.sleep(2.5)  # past the TTL, inside the turn
    retry = app.test_client().post("/chat", json={"message": "slow"}, headers=headers)
    assert retry.status_code == 409, retry.get_json()
    assert retry.get_json()["error"]["code"] == "idempotency_key_in_progress"
    first.join(30)
    assert out[0].status_code == 200, out[0].get_json()
    assert model.request_count == 1


# -- D. A read never stitches two lives of a session -------------------------------------


def test_a_read_held_while_the_id_is_deleted_and_recreated_is_one_life(
    through: Build, make_client: Build, proxy: FaultProxy, model: DemoModelServer
) -> None:
    env = {"auth_mode": "api_key", "auth_api_keys": API_KEYS}
    reader, direct = through(**env, firestore_timeout_seconds="8"), make_client(**env)
    alice, bob = {"X-API-Key": ALICE_KEY}, {"X-API-Key": BOB_KEY}
    sid = "d" + secrets.token_hex(6)
    model.control(reply_bytes=600_000)  # inline: the history seals a 512 KiB chunk
    body = {"message": "alice's secret", "session_id": sid}
    assert direct.post("/chat", json=body, headers=alice).status_code == 200
    first_life = direct.get(f"/sessions/{sid}", headers=alice).get_json()
    rule = proxy.arm(f"{sid}/agent_history_chunks/000000", "hold_request", seconds=3)
    thread, out = in_thread(lambda: reader.get(f"/sessions/{sid}", headers=alice))
    assert rule.fired.wait(15)
    assert direct.delete(f"/sessions/{sid}", headers=alice).status_code == 204
    model.control(reply_bytes=700_000)
    body = {"message": "bob's words", "session_id": sid}
    assert direct.post("/chat", json=body, headers=bob).status_code == 200
    thread.join(30)
    response = out[0]
    # Alice reads her own session as it was, or not at all: never bob's chunk under her tail.
    assert response.status_code in (200, 404), response.status_code
    if response.status_code == 200:
        assert response.get_json() == first_life


# -- F. Honest statuses ----------------------------------------------------------------


def test_twenty_concurrent_deletes_of_an_idle_session_are_one_204_and_nineteen_404s(
    client: FlaskClient,
) -> None:
    assert client.post("/chat", json={"message": "hi", "session_id": "f1"}).status_code == 200
    app = client.application
    start = threading.Barrier(20)

    def delete(_: int) -> int:
        own = app.test_client()
        start.wait()
        return own.delete("/sessions/f1").status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(delete, range(20)))
    assert statuses == {204: 1, 404: 19}


def test_a_turn_racing_a_delete_of_an_idle_session_is_not_busy(
    through: Build, make_client: Build, proxy: FaultProxy
) -> None:
    racer, direct = through(), make_client()
    assert direct.post("/chat", json={"message": "one", "session_id": "f2"}).status_code == 200
    # The turn's claim write is held while the session is deleted under it.
    rule = proxy.arm("claim_token", "hold_request", seconds=1.5)
    thread, out = in_thread(
        lambda: racer.post("/chat", json={"message": "two", "session_id": "f2"})
    )
    assert rule.fired.wait(15)
    assert direct.delete("/sessions/f2").status_code == 204
    thread.join(30)
    response = out[0]
    assert response.status_code == 200, response.get_json()  # not 409 session_busy
    assert response.get_json()["new_session"] is True
    assert users(direct, "f2") == ["two"]


def test_during_a_first_turn_a_read_is_404_and_a_delete_409(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(delay_seconds=1.5)
    thread, out = in_thread(
        lambda: client.application.test_client().post(
            "/chat", json={"message": "first", "session_id": "f3"}
        )
    )
    while model.request_count < 1:
        time.sleep(0.02)
    assert client.get("/sessions/f3").status_code == 404  # nothing stored yet
    busy = client.delete("/sessions/f3")  # but a turn runs: deleting now would lose it
    assert busy.status_code == 409 and busy.get_json()["error"]["code"] == "session_busy"
    assert_conforms("DELETE", "/sessions/{session_id}", 409, busy.get_json(), busy.headers)
    thread.join(30)
    assert out[0].status_code == 200
    assert users(client, "f3") == ["first"]


# -- Issue 10: results belong to one life; TTL cannot delete a claimed session -------------


def test_an_expired_id_taken_over_cannot_reach_the_previous_lifes_results(
    make_client: Build, results_env: dict[str, str], model: DemoModelServer, storage
) -> None:
    client = make_client(
        **results_env, auth_mode="api_key", auth_api_keys=API_KEYS, session_ttl_seconds="1"
    )
    alice, bob = {"X-API-Key": ALICE_KEY}, {"X-API-Key": BOB_KEY}
    model.control(reply_bytes=300_000)
    response = client.post("/chat", json={"message": "mine", "session_id": "x1"}, headers=alice)
    turn_id = response.get_json()["result"]["turn_id"]
    time.sleep(1.2)  # alice's session expires
    model.reset()
    taken = client.post("/chat", json={"message": "now mine", "session_id": "x1"}, headers=bob)
    assert taken.status_code == 200 and taken.get_json()["new_session"] is True
    resigned = client.get(f"/sessions/x1/results/{turn_id}", headers=bob)
    assert resigned.status_code == 404, resigned.get_json()
    assert storage.object_names() == []  # alice's objects are gone


def test_the_claim_write_keeps_the_document_past_the_claims_end(firestore) -> None:
    store = HistoryStore(fs.Client(), ttl_seconds=1, timeout_seconds=3)
    now = dt.datetime.now(dt.UTC)
    for session_id in ("live", "expired"):
        claim = store.claim(session_id, now, now + dt.timedelta(seconds=30))
        store.commit(claim, [{"role": "user", "content": "hi"}], now)  # expires now + 1 s
    later = now + dt.timedelta(seconds=5)
    cases = {"live": now, "expired": later}  # the second id is taken over after expiry
    for session_id, when in cases.items():
        until = when + dt.timedelta(seconds=60)
        store.claim(session_id, when, until)
        doc = fs.Client().collection(SESSIONS).document(session_id).get().to_dict()
        assert doc[TTL_FIELD] >= until, session_id
    # A live history with sealed chunks: they are kept past the claim's end too.
    claim = store.claim("chunked", now, now + dt.timedelta(seconds=30))
    store.commit(claim, [{"role": "user", "content": "x" * 600_000}], now)
    until = now + dt.timedelta(seconds=60)
    store.claim("chunked", now, until)
    (chunk,) = fs.Client().collection(SESSIONS).document("chunked").collection(CHUNKS).stream()
    assert chunk.to_dict()[TTL_FIELD] >= until
