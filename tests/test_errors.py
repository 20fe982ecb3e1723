"""Every bad input gets its status and the error shape, and no internals."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from tests.support.openapi_contract import assert_conforms

INTERNALS = ("Traceback", 'File "', ".py", "google.", "grpc", "Exception")


def check_error(response, method: str, path: str, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    body = response.get_json()
    assert body["error"]["code"] == code, body
    text = response.get_data(as_text=True)
    assert not any(marker in text for marker in INTERNALS), text
    assert_conforms(method, path, status, body, response.headers)
    return body


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({}, "invalid_request", "message"),
        ({"message": ""}, "invalid_request", "message"),
        ({"message": "   "}, "invalid_request", "message"),
        ({"message": 42}, "invalid_request", "message"),
        ({"message": None}, "invalid_request", "message"),
        ({"message": ["a"]}, "invalid_request", "message"),
        ({"message": "hi", "sesion_id": "abc"}, "invalid_request", "sesion_id"),
        ({"message": "hi", "session_id": 7}, "invalid_request", "session_id"),
        ({"message": "hi", "session_id": ""}, "invalid_session_id", "session_id"),
        ({"message": "hi", "session_id": "a/b"}, "invalid_session_id", "session_id"),
        ({"message": "hi", "session_id": "../x"}, "invalid_session_id", "session_id"),
        ({"message": "hi", "session_id": "x" * 129}, "invalid_session_id", "session_id"),
        ({"message": "hi", "session_id": "caf\u00e9"}, "invalid_session_id", "session_id"),
        ({"message": "x" * 32_001}, "message_too_long", "32000"),
        ([1, 2], "invalid_request", "object"),
        ("just a string", "invalid_request", "object"),
    ],
)
def test_bad_chat_body(client: FlaskClient, model: DemoModelServer, body, code, needle) -> None:
    response = client.post("/chat", data=json.dumps(body), content_type="application/json")
    error = check_error(response, "POST", "/chat", 400, code)
    assert needle in error["error"]["message"]
    assert model.request_count == 0


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"\xff\xfe{}", b'{"message": "a"', b"[" * 100_000]
)
def test_invalid_json(client: FlaskClient, raw: bytes) -> None:
    response = client.post("/chat", data=raw, content_type="application/json")
    check_error(response, "POST", "/chat", 400, "invalid_json")


def test_lone_surrogate_is_rejected_not_a_500(client: FlaskClient) -> None:
    raw = b'{"message": "\\ud800 oops"}'
    response = client.post("/chat", data=raw, content_type="application/json")
    check_error(response, "POST", "/chat", 400, "invalid_request")


def test_message_at_the_limit_is_accepted(client: FlaskClient) -> None:
    response = client.post("/chat", json={"message": "x" * 32_000})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post("/chat", data='{"message": "hi"}', **kwargs)
    check_error(response, "POST", "/chat", 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post(
        "/chat", data='{"message": "hi"}', content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 200


def test_body_over_the_limit_is_413(client: FlaskClient, model: DemoModelServer) -> None:
    body = json.dumps({"message": "x" * 300_000})
    response = client.post("/chat", data=body, content_type="application/json")
    check_error(response, "POST", "/chat", 413, "request_too_large")
    assert model.request_count == 0


def test_unknown_route_is_404(client: FlaskClient) -> None:
    for path in ("/nope", "/chat/extra", "/sessions/a/b"):  # "/" is the chat page
        check_error(client.get(path), "GET", path, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/chat", "POST"), ("PUT", "/sessions/abc", "DELETE"), ("POST", "/healthz", "GET")],
)
def test_wrong_method_is_405_with_allow(client: FlaskClient, method, path, allowed) -> None:
    response = client.open(path, method=method)
    check_error(response, method, path, 405, "method_not_allowed")
    assert allowed in response.headers["Allow"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_malformed_session_id_in_path(client: FlaskClient, method: str) -> None:
    path = "/sessions/" + "x" * 129
    check_error(client.open(path, method=method), method, path, 400, "invalid_session_id")


def test_model_failure_is_502_and_history_unchanged(
    client: FlaskClient, model: DemoModelServer
) -> None:
    assert client.post("/chat", json={"message": "keep", "session_id": "m"}).status_code == 200
    before = client.get("/sessions/m").get_json()
    model.control(fail_status=500, fail_count=-1)
    response = client.post("/chat", json={"message": "lost", "session_id": "m"})
    check_error(response, "POST", "/chat", 502, "model_error")
    model.reset()
    assert client.get("/sessions/m").get_json() == before
    # The claim was released: the session is usable at once.
    assert client.post("/chat", json={"message": "again", "session_id": "m"}).status_code == 200


def test_model_failure_on_a_new_session_leaves_nothing(client: FlaskClient, model) -> None:
    model.control(fail_status=503, fail_count=-1)
    response = client.post("/chat", json={"message": "hello", "session_id": "fresh"})
    check_error(response, "POST", "/chat", 502, "model_error")
    model.reset()
    assert client.get("/sessions/fresh").status_code == 404
    response = client.post("/chat", json={"message": "hello", "session_id": "fresh"})
    assert response.get_json()["new_session"] is True


def test_turn_past_its_deadline_is_504_and_history_unchanged(make_client, model) -> None:
    client = make_client(function_timeout_seconds=3, deadline_margin_seconds=0.5)
    assert client.post("/chat", json={"message": "keep", "session_id": "slow"}).status_code == 200
    before = client.get("/sessions/slow").get_json()
    model.control(delay_seconds=4)
    response = client.post("/chat", json={"message": "too slow", "session_id": "slow"})
    check_error(response, "POST", "/chat", 504, "deadline_exceeded")
    model.reset()
    assert client.get("/sessions/slow").get_json() == before
    assert client.post("/chat", json={"message": "ok", "session_id": "slow"}).status_code == 200


def test_max_turns_exceeded_is_422(make_client) -> None:
    client = make_client(agent_max_turns=1)  # a tool call needs two model turns
    response = client.post("/chat", json={"message": "what is 2 + 2?", "session_id": "mt"})
    check_error(response, "POST", "/chat", 422, "max_turns_exceeded")
    assert client.get("/sessions/mt").status_code == 404


def test_a_bug_is_500_with_a_correlation_id_in_the_log(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.api import requests as validation

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail /srv/app.py")

    monkeypatch.setattr("agent.api.app.parse_chat", broken)
    assert validation.parse_chat is not broken
    response = client.post("/chat", json={"message": "hi"})
    body = check_error(response, "POST", "/chat", 500, "internal_error")
    assert "secret internal detail" not in response.get_data(as_text=True)
    request_id = body["error"]["request_id"]
    assert response.headers["X-Request-Id"] == request_id
    logged = [r for r in caplog.records if r.exc_info and request_id in str(r.__dict__)]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
