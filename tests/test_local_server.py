"""Over real HTTP: the functions-framework server running main.agent_http."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from local.demo_model import DemoModelServer
from local.server import LiveServer as Server
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms


@pytest.fixture
def server_env(store_env: dict[str, str], model: DemoModelServer) -> dict[str, str]:
    return (
        os.environ
        | store_env
        | {
            "OPENAI_BASE_URL": model.base_url,
            "AGENT_MODEL": MODEL,
            "OPENAI_API_KEY": "sk-test-must-never-be-logged",
            "AUTH_MODE": "none",
        }
    )


@pytest.fixture
def server(server_env: dict[str, str]) -> Iterator[Server]:
    running = Server(server_env)
    yield running
    running.stop()


def test_conversation_survives_a_server_restart(server_env: dict[str, str]) -> None:
    first = Server(server_env)
    status, body, headers = first.call("POST", "/chat", {"message": "I am Grace"})
    assert status == 200, body
    assert_conforms("POST", "/chat", 200, body, headers)
    session_id = body["session_id"]
    status, body, _ = first.call("POST", "/chat", {"message": "hi", "session_id": session_id})
    assert status == 200 and body["new_session"] is False
    log = first.stop()

    second = Server(server_env)  # a new instance: nothing carried over in memory
    try:
        status, body, _ = second.call(
            "POST", "/chat", {"message": "who am I?", "session_id": session_id}
        )
        assert status == 200, body
        assert body["new_session"] is False
        assert 'your first message was: "I am Grace"' in body["reply"]
        assert "message 3" in body["reply"]
        status, history, _ = second.call("GET", f"/sessions/{session_id}")
        assert status == 200 and history["turns"] == 3
    finally:
        log += second.stop()
    # Logs are JSON lines without message text, replies or the key.
    assert "sk-test-must-never-be-logged" not in log
    assert "I am Grace" not in log and "[demo model]" not in log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    turns = [e for e in entries if e.get("session_id") == session_id and e.get("status") == 200]
    assert len(turns) >= 3 and all(e["severity"] == "INFO" for e in turns)


def test_errors_over_http_keep_their_shape(server: Server) -> None:
    status, body, headers = server.call("GET", "/no-such-route")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, headers = server.call("POST", "/chat", {"message": ""})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert_conforms("POST", "/chat", 400, body, headers)
    status, body, _ = server.call("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})


def test_without_auth_only_loopback_hosts_are_answered(server: Server) -> None:
    """AUTH_MODE=none (``make run``): a DNS-rebinding page reaches 127.0.0.1 but sends its
    own name as Host; it must not drive the agent or read a conversation."""
    status, body, _ = server.call("POST", "/chat", {"message": "hi"})
    assert status == 200, body
    session_id = body["session_id"]
    for host in ("attacker.example", f"attacker.example:{server.port}", "127.0.0.1.nip.io"):
        for method, path, payload in (
            ("POST", "/chat", {"message": "send it", "session_id": session_id}),
            ("GET", f"/sessions/{session_id}", None),
            ("DELETE", f"/sessions/{session_id}", None),
        ):
            # Not tied to an operation in openapi.yaml (components/responses/InvalidHost).
            status, body, _ = server.call(method, path, payload, {"Host": host})
            assert status == 400, (host, method, body)
            assert body["error"]["code"] == "invalid_host"
            assert "AUTH_MODE=none" in body["error"]["message"]
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]", "localhost"):
        status, body, _ = server.call("GET", f"/sessions/{session_id}", None, {"Host": host})
        assert status == 200 and body["turns"] == 1, (host, body)
    status, _, _ = server.call("GET", "/healthz", None, {"Host": "attacker.example"})
    assert status == 200  # liveness holds no data
