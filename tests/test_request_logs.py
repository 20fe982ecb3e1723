"""Structured request logs (trace, principal, outcome, nothing private) and CORS."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient
from werkzeug.datastructures import Headers

from agent.base.logs import JsonFormatter, trace_fields
from tests.support.constants import ALICE_KEY, PROJECT

TRACE = "105445aa7843bc8bf206b12000100000"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The JSON lines as the service writes them, formatted at the time of logging."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO, logger: str | None = None) -> list[dict]:
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if logger is None or e["logger"] == logger]


@pytest.fixture
def keyed(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(auth_mode="api_key", auth_api_keys=f"alice:{ALICE_KEY}")


def test_request_lines_carry_trace_principal_and_outcome_but_no_text(
    keyed: FlaskClient, json_log: io.StringIO
) -> None:
    headers = {"X-API-Key": ALICE_KEY, "X-Cloud-Trace-Context": f"{TRACE}/1;o=1"}
    ok = keyed.post(
        "/chat", json={"message": "my secret is 42", "session_id": "L1"}, headers=headers
    )
    refused = keyed.get("/sessions/L1", headers={"X-API-Key": "wrong-key-0123456789"})
    assert (ok.status_code, refused.status_code) == (200, 401)
    first, second = lines(json_log, "agent.api.app")
    assert first["severity"] == "INFO"
    assert first["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE}"
    assert first["logging.googleapis.com/spanId"] == "0000000000000001"
    assert first["logging.googleapis.com/trace_sampled"] is True
    assert first["principal"] == "alice" and first["outcome"] == "ok"
    assert first["session_id"] == "L1" and first["usage"]["requests"] == 1
    assert first["request_id"] == ok.headers["X-Request-Id"]
    assert isinstance(first["latency_ms"], float)
    assert second["outcome"] == "unauthenticated" and second["principal"] is None
    assert "logging.googleapis.com/trace" not in second  # that request sent none
    for private in ("my secret is 42", "[demo model]", ALICE_KEY, "wrong-key"):
        assert private not in json_log.getvalue()


def test_every_line_of_a_request_shares_its_trace(
    keyed: FlaskClient, json_log: io.StringIO
) -> None:
    keyed.get(
        "/sessions/x",
        headers={"X-API-Key": "nope-0123456789abcdef", "X-Cloud-Trace-Context": TRACE},
    )
    entries = lines(json_log)
    assert {e["logger"] for e in entries} >= {"agent.auth.modes", "agent.api.app"}
    assert all(e.get("logging.googleapis.com/trace", "").endswith(TRACE) for e in entries)
    # After the request, nothing is bound any more.
    logging.getLogger("agent.test").info("after")
    assert "logging.googleapis.com/trace" not in lines(json_log, "agent.test")[0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Cloud-Trace-Context": f"{TRACE}/17;o=0"}, (TRACE, "0000000000000011", False)),
        ({"X-Cloud-Trace-Context": TRACE}, (TRACE, None, None)),
        (
            {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
            (TRACE, "00f067aa0ba902b7", True),
        ),
        (  # both: the standard header wins (issue 10 item 8)
            {
                "X-Cloud-Trace-Context": f"{'1' * 32}/17;o=0",
                "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            },
            (TRACE, "00f067aa0ba902b7", True),
        ),
        (  # a malformed traceparent falls back to the legacy header
            {"X-Cloud-Trace-Context": f"{TRACE}/17;o=1", "traceparent": "garbage"},
            (TRACE, "0000000000000011", True),
        ),
        ({"X-Cloud-Trace-Context": "not-a-trace"}, None),
        ({"X-Cloud-Trace-Context": "0" * 32}, None),
        ({}, None),
    ],
)
def test_trace_header_parsing(headers: dict[str, str], expected) -> None:
    fields = trace_fields(Headers(headers), "proj")
    if expected is None:
        assert fields == {}
        return
    trace, span, sampled = expected
    assert fields["logging.googleapis.com/trace"] == f"projects/proj/traces/{trace}"
    assert fields.get("logging.googleapis.com/spanId") == span
    assert fields.get("logging.googleapis.com/trace_sampled") == sampled
    assert trace_fields(Headers(headers), None) == {}


# -- CORS ----------------------------------------------------------------------------


def test_no_cross_origin_access_by_default(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert not any(h.startswith("Access-Control-") for h in response.headers.keys())  # noqa: SIM118


def test_only_listed_origins_get_cors_headers(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(
        auth_mode="api_key",
        auth_api_keys=f"alice:{ALICE_KEY}",
        cors_allowed_origins="https://app.example.com, http://localhost:3000",
    )
    allowed = client.post(
        "/chat",
        json={"message": "hi"},
        headers={"Origin": "https://app.example.com", "X-API-Key": ALICE_KEY},
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-Id" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Origin" in allowed.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    other = client.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # A preflight carries no credentials and must not need them.
    preflight = client.options(
        "/chat",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key, idempotency-key",
        },
    )
    assert preflight.status_code in (200, 204)
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    for header in ("X-API-Key", "Idempotency-Key", "Content-Type", "Authorization"):
        assert header in preflight.headers["Access-Control-Allow-Headers"]
