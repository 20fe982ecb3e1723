"""Failures that happen in production: a flaky or hanging model, Firestore going away
and coming back, an instance killed mid-turn."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator
from local.server import LiveServer as Server
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms


def test_model_429_is_retried_with_backoff_and_succeeds(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    client = make_client(model_max_retries=2)
    model.control(fail_status=429, fail_count=2)
    response = client.post("/chat", json={"message": "hi", "session_id": "r1"})
    assert response.status_code == 200
    assert model.request_count == 3


@pytest.mark.parametrize("status", [500, 503])
def test_model_errors_after_bounded_retries_are_502(
    make_client: Callable[..., FlaskClient], model: DemoModelServer, status: int
) -> None:
    client = make_client(model_max_retries=2)
    model.control(fail_status=status, fail_count=-1)
    started = time.monotonic()
    response = client.post("/chat", json={"message": "hi", "session_id": "r2"})
    assert response.status_code == 502
    assert_conforms("POST", "/chat", 502, response.get_json(), response.headers)
    assert model.request_count == 3  # the first try and two retries, no more
    assert time.monotonic() - started < 5  # backoff 0.5 s then 1 s, with jitter


def test_a_quota_that_outlasts_the_retries_is_503_model_overloaded(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    # A 429 is the provider saying "not now", not "broken": the caller should come back.
    client = make_client(model_max_retries=2)
    model.control(fail_status=429, fail_count=-1)
    response = client.post("/chat", json={"message": "hi", "session_id": "r4"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "model_overloaded"
    assert int(response.headers["Retry-After"]) >= 1
    assert_conforms("POST", "/chat", 503, response.get_json(), response.headers)
    assert model.request_count == 3
    assert client.get("/sessions/r4").status_code == 404  # nothing stored


def test_retries_never_outlast_the_deadline(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    client = make_client(
        model_max_retries=10, function_timeout_seconds=3, deadline_margin_seconds=0.5
    )
    model.control(fail_status=503, fail_count=-1)
    started = time.monotonic()
    response = client.post("/chat", json={"message": "hi", "session_id": "r3"})
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and elapsed < 3.0, (response.status_code, elapsed)
    assert 1 < model.request_count < 11


def test_a_hanging_model_is_504_at_the_model_timeout(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    client = make_client(model_timeout_seconds=1)
    assert client.post("/chat", json={"message": "keep", "session_id": "h"}).status_code == 200
    before = client.get("/sessions/h").get_json()
    model.control(hang_seconds=30)
    started = time.monotonic()
    response = client.post("/chat", json={"message": "lost", "session_id": "h"})
    assert response.status_code == 504 and time.monotonic() - started < 3
    assert_conforms("POST", "/chat", 504, response.get_json(), response.headers)
    model.reset()
    assert client.get("/sessions/h").get_json() == before


@pytest.fixture
def own_emulator(firestore: FirestoreEmulator) -> Iterator[FirestoreEmulator]:
    """An emulator of this test's own, to stop and restart."""
    emulator = FirestoreEmulator().start()
    yield emulator
    emulator.stop()


def test_firestore_down_is_503_and_the_service_recovers_by_itself(
    make_client: Callable[..., FlaskClient],
    own_emulator: FirestoreEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", own_emulator.host)
    client = make_client(firestore_timeout_seconds=2)  # its client reads the variable above
    # A just-started emulator on a busy machine can miss the first 2 s bound; that is
    # not what this test is about, so wait for it to serve once.
    warm = time.monotonic() + 20
    while client.post("/chat", json={"message": "a", "session_id": "f1"}).status_code != 200:
        assert time.monotonic() < warm, "the emulator never served"
        time.sleep(0.5)
    own_emulator.stop()
    for method, path, body in (
        ("POST", "/chat", {"message": "b", "session_id": "f1"}),
        ("GET", "/sessions/f1", None),
    ):
        started = time.monotonic()
        response = client.open(path, method=method, json=body)
        assert response.status_code == 503 and time.monotonic() - started < 4
        assert_conforms(method, path, 503, response.get_json(), response.headers)
    time.sleep(3)  # an outage of a few seconds: the client's reconnect backoff grows
    own_emulator.start()  # on the same port; in memory, so it comes back empty
    started, statuses = time.monotonic(), []
    while time.monotonic() - started < 30:
        response = client.post("/chat", json={"message": "c", "session_id": "f2"})
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        assert response.status_code == 503
        time.sleep(0.5)
    assert statuses[-1] == 200, statuses
    recovery = time.monotonic() - started
    print(f"recovered {recovery:.1f} s after Firestore returned ({len(statuses)} requests)")
    assert recovery < 15
    assert client.get("/sessions/f2").status_code == 200


def test_an_instance_killed_mid_turn_leaves_no_partial_turn(
    store_env: dict[str, str], model: DemoModelServer
) -> None:
    # Two server processes on one store: on SQLite, two processes on one file.
    env = (
        os.environ
        | store_env
        | {
            "OPENAI_BASE_URL": model.base_url,
            "AGENT_MODEL": MODEL,
            "AUTH_MODE": "none",
            "FUNCTION_TIMEOUT_SECONDS": "4",
            "DEADLINE_MARGIN_SECONDS": "0.5",
            "MODEL_MAX_RETRIES": "0",
        }
    )
    # The second instance starts first: how long a server takes to start must not
    # decide whether the first one's claim is still held when it is asked.
    second = Server(env)
    first = Server(env)
    try:
        status, _, _ = first.call("POST", "/chat", {"message": "keep", "session_id": "k"})
        assert status == 200
        _, before, _ = first.call("GET", "/sessions/k")
        model.control(delay_seconds=30)
        doomed = threading.Thread(
            target=lambda: _ignore(
                first.call, "POST", "/chat", {"message": "x", "session_id": "k"}
            ),
            daemon=True,
        )
        doomed.start()
        while model.request_count < 2:  # the doomed turn holds the claim, waits on the model
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
        model.reset()
        status, body, headers = second.call("POST", "/chat", {"message": "y", "session_id": "k"})
        assert status == 409 and body["error"]["code"] == "session_busy"  # claim still held
        assert int(headers["Retry-After"]) >= 1
        time.sleep(max(0.0, killed_at + 4 - time.monotonic()))  # the claim lapses by then
        status, after, _ = second.call("GET", "/sessions/k")
        assert status == 200 and after["items"] == before["items"]  # no trace of "x"
        status, body, _ = second.call("POST", "/chat", {"message": "z", "session_id": "k"})
        assert status == 200, body
        _, final, _ = second.call("GET", "/sessions/k")
        users = [i["content"] for i in final["items"] if i.get("role") == "user"]
        assert users == ["keep", "z"]
    finally:
        if first.process.poll() is None:
            first.stop()
        second.stop()


def _ignore(call: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(OSError):  # the server died under it, as intended
        call(*args)
