"""Hostile input against the live local server (functions-framework, gunicorn).

Exploratory runs: ``FUZZ_RANDOM=1 FUZZ_EXAMPLES=1000 pytest tests/test_hostile_input.py``.

A property-based run of schemathesis over openapi.yaml (valid and invalid requests
alike: no 500, every response as the spec says), then targeted cases a fuzzer
rarely builds: oversized and chunked bodies, deep nesting, invalid UTF-8, path
tricks in session ids, huge headers, wrong content types.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator
from local.server import LiveServer as Server
from tests.support.constants import LOOPBACK, MODEL
from tests.support.openapi_contract import SPEC_PATH, assert_conforms
from tests.support.stores import backend_under_test

KEY = "fuzz-key-0123456789abcdef"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))

schema = schemathesis.openapi.from_path(SPEC_PATH)
# The credential is ours to send (below); generated ones would only be junk tokens.
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
    with_security_parameters=False,
    # Reproducible in the normal suite; FUZZ_RANDOM=1 explores new inputs on each run.
    deterministic=os.environ.get("FUZZ_RANDOM") != "1",
)
# A too-long message can also be too many bytes: 413 rejects it as surely as 400.
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest,
    model_server: DemoModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    if backend_under_test() == "firestore":
        emulator: FirestoreEmulator = request.getfixturevalue("firestore_emulator")
        store = {"HISTORY_BACKEND": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host}
    else:
        path = tmp_path_factory.mktemp("fuzz") / "history.sqlite3"
        store = {"HISTORY_BACKEND": "sqlite", "SQLITE_PATH": str(path)}
    env = (
        os.environ
        | store
        | {
            "GOOGLE_CLOUD_PROJECT": "agent-fuzz",  # its own project: wipes of others don't matter
            "OPENAI_BASE_URL": model_server.base_url,
            "AGENT_MODEL": MODEL,
            "AUTH_MODE": "api_key",
            "AUTH_API_KEYS": f"fuzzer:{KEY}",
            "MODEL_MAX_RETRIES": "0",
        }
    )
    server = Server(env)
    yield server
    output = server.stop()
    assert "Traceback" not in output, output[-3000:]  # no unhandled error, even logged


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    max_examples=EXAMPLES,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
)
def test_the_api_conforms_to_its_spec_under_generated_input(case, live: Server) -> None:
    key = (case.headers or {}).get("Idempotency-Key")
    if key is not None and re.fullmatch(r"[!-~]{1,255}", key):
        # A valid key reused with another body is rightly 422; the generator reuses the
        # spec's example key, so give each case its own (test_idempotency covers reuse).
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if isinstance(case.body, dict) and case.body.get("background") is True:
        # Whether a webhook's host is allowed is the deployment's list, which the spec
        # cannot state (tests/test_webhooks.py covers it).
        case.body.pop("webhook", None)
    response = case.call_and_validate(
        base_url=f"http://{LOOPBACK}:{live.port}", headers={"X-API-Key": KEY}, timeout=30
    )
    assert response.status_code < 500 or response.status_code in (502, 503, 504)


def raw(
    live: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(LOOPBACK, live.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        all_headers = {"X-API-Key": KEY} | (headers or {})
        if body is not None and "Transfer-Encoding" not in all_headers:
            all_headers["Content-Length"] = str(len(body))
        for name, value in all_headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body is not None:
            connection.send(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def check(live: Server, method: str, path: str, status: int, code: str, **kwargs) -> None:
    got, headers, data = raw(live, method, path, **kwargs)
    body = json.loads(data)
    assert (got, body["error"]["code"]) == (status, code), body
    assert_conforms(method, path.split("?")[0], got, body, headers)


JSON = {"Content-Type": "application/json"}


def test_oversized_bodies_are_413(live: Server) -> None:
    check(live, "POST", "/chat", 413, "request_too_large", body=b"x" * 300_000, headers=JSON)
    # A chunked body declares no length: the limit holds while it streams in.
    chunk = b"%X\r\n%s\r\n" % (65536, b"y" * 65536)
    chunked = chunk * 5 + b"0\r\n\r\n"
    check(
        live,
        "POST",
        "/chat",
        413,
        "request_too_large",
        body=chunked,
        headers=JSON | {"Transfer-Encoding": "chunked"},
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"message": ' + b'{"a": ' * 30_000 + b"1" + b"}" * 30_001,
        b'{"message": "\xff\xfe caf\xe9"}',
        b'{"message": "\xed\xa0\x80"}',  # an encoded surrogate: not UTF-8
        b"\x00\x01\x02",
        b'{"message": "a", "message": {"dup": 1}}',
    ],
    ids=["nested-arrays", "nested-objects", "latin1", "surrogate", "binary", "duplicate-key"],
)
def test_malformed_bodies_are_400(live: Server, body: bytes) -> None:
    got, headers, data = raw(live, "POST", "/chat", body=body, headers=JSON)
    assert got == 400, data
    assert_conforms("POST", "/chat", 400, json.loads(data), headers)


@pytest.mark.parametrize(
    "path",
    [
        "/sessions/..",
        "/sessions/..%2F..%2Fetc%2Fpasswd",
        "/sessions/a%2Fb",
        "/sessions/%2e%2e",
        "/sessions/__name__",
        "/sessions/" + "a" * 129,
        "/sessions/a%00b",
        "/sessions/caf%C3%A9",
        "/sessions/a;b",
        "/sessions/a%20b",
        "/sessions/%0A",  # the outer app's catch-all route does not match a newline
    ],
)
def test_path_tricks_in_session_ids_never_reach_another_document(live: Server, path: str) -> None:
    for method in ("GET", "DELETE"):
        got, headers, data = raw(live, method, path)
        body = json.loads(data)
        assert got in (400, 404), (path, got, body)
        assert body["error"]["code"] in ("invalid_session_id", "session_not_found", "not_found")
        assert_conforms(method, urllib.parse.unquote(path), got, body, headers)  # as routed


@pytest.mark.parametrize("session_id", ["../x", "a/b", "..", "__x__", ".", "a\\b", "a\nb"])
def test_path_tricks_in_body_session_ids(live: Server, session_id: str) -> None:
    body = json.dumps({"message": "hi", "session_id": session_id}).encode()
    got, _, data = raw(live, "POST", "/chat", body=body, headers=JSON)
    if session_id == "__x__":  # valid; stored under a ~-prefixed document id
        assert got == 200 and json.loads(data)["session_id"] == "__x__"
        return
    assert got == 400 and json.loads(data)["error"]["code"] == "invalid_session_id"


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico"])
def test_paths_the_platform_reserves_answer_in_the_error_shape(live: Server, path: str) -> None:
    got, headers, data = raw(live, "GET", path)
    assert got == 404 and json.loads(data)["error"]["code"] == "not_found"
    assert_conforms("GET", path, 404, json.loads(data), headers)


def test_huge_headers_are_refused_without_a_5xx(live: Server) -> None:
    # gunicorn refuses these before the app sees them (its own plain-text 400/431).
    got, _, _ = raw(live, "GET", "/healthz", headers={"X-Big": "a" * 70_000})
    assert 400 <= got < 500
    many = {f"X-H{i}": "v" for i in range(200)}
    got, _, _ = raw(live, "GET", "/healthz", headers=many)
    assert 400 <= got < 500
    got, _, _ = raw(live, "GET", "/healthz")  # and the server is still there
    assert got == 200


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/jsonx", "multipart/form-data; boundary=x", "application/xml", ""],
)
def test_wrong_content_types_are_415(live: Server, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    check(
        live,
        "POST",
        "/chat",
        415,
        "unsupported_media_type",
        body=b'{"message":"hi"}',
        headers=headers,
    )


def test_unauthenticated_hostile_input_learns_nothing(live: Server) -> None:
    got, _, data = raw(live, "POST", "/chat", body=b"[" * 1000, headers=JSON | {"X-API-Key": ""})
    assert got == 401 and json.loads(data)["error"]["code"] == "unauthenticated"
