"""Concurrent turns: one per session at a time, and nothing lost across sessions."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.emulators import free_port
from tests.support.constants import LOOPBACK
from tests.support.openapi_contract import assert_conforms


def test_two_turns_on_one_session_give_one_200_and_one_409(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(delay_seconds=1.0)
    app = client.application

    def turn(text: str) -> tuple[int, float, dict, dict]:
        started = time.monotonic()
        response = app.test_client().post("/chat", json={"message": text, "session_id": "one"})
        return (
            response.status_code,
            time.monotonic() - started,
            response.get_json(),
            dict(response.headers),
        )

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(turn, "first")
        time.sleep(0.3)  # the first has claimed the session and waits on the model
        second = pool.submit(turn, "second")
        results = [first.result(), second.result()]
    statuses = sorted(status for status, *_ in results)
    assert statuses == [200, 409]
    _, elapsed, body, headers = next(r for r in results if r[0] == 409)
    assert elapsed < 0.5  # refused at once, not after waiting for the lock
    assert body["error"]["code"] == "session_busy"
    assert int(headers["Retry-After"]) >= 1
    assert_conforms("POST", "/chat", 409, body, headers)
    model.reset()
    items = client.get("/sessions/one").get_json()["items"]
    assert [i["content"] for i in items if i.get("role") == "user"] == ["first"]


def test_concurrent_sessions_lose_nothing(client: FlaskClient, model: DemoModelServer) -> None:
    model.control(delay_seconds=0.05)
    app = client.application
    sessions, turns = 8, 5

    def converse(n: int) -> list[int]:
        own = app.test_client()
        return [
            own.post("/chat", json={"message": f"s{n} t{t}", "session_id": f"s{n}"}).status_code
            for t in range(turns)
        ]

    with ThreadPoolExecutor(sessions) as pool:
        statuses = [s for result in pool.map(converse, range(sessions)) for s in result]
    assert statuses == [200] * sessions * turns
    for n in range(sessions):
        body = client.get(f"/sessions/s{n}").get_json()
        assert body["turns"] == turns
        users = [i["content"] for i in body["items"] if i.get("role") == "user"]
        assert users == [f"s{n} t{t}" for t in range(turns)]  # none lost, duplicated or reordered
        assert [i.get("role") for i in body["items"]] == ["user", "assistant"] * turns


def test_firestore_down_gives_503_within_seconds(
    make_client, monkeypatch: pytest.MonkeyPatch, model: DemoModelServer
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"{LOOPBACK}:{free_port()}")  # nobody there
    # No emulator needed: the client only has to be pointed at a port nobody answers.
    client = make_client(firestore_timeout_seconds=2, history_backend="firestore")
    for method, path, body in (
        ("POST", "/chat", {"message": "hi", "session_id": "down"}),
        ("GET", "/sessions/down", None),
        ("DELETE", "/sessions/down", None),
    ):
        started = time.monotonic()
        response = client.open(path, method=method, json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (method, response.get_json())
        assert response.get_json()["error"]["code"] == "storage_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert elapsed < 5, elapsed
        assert_conforms(method, path, 503, response.get_json(), response.headers)
    assert model.request_count == 0  # nothing is spent on the model without storage
