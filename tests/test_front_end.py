"""Through a stand-in of Google's front end (issue 10 item 1): the real server behind a
proxy that verifies identity tokens the way Cloud Run does and forwards them with their
signature replaced by SIGNATURE_REMOVED_BY_GOOGLE. Every real call used to get 401."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from local.server import LiveServer
from tests.support.constants import service_account_email
from tests.support.google_front_end import GCLOUD_CLIENT_ID, GoogleFrontEnd
from tests.support.google_id_tokens import (
    CertsServer,
    SigningKey,
    strip_signature,
    subject_of,
)

REGION, PROJECT_ID, NUMBER, NAME = "us-central1", "agent-test", "123456789012", "agent"
FUNCTION_URLS = [
    f"https://{REGION}-{PROJECT_ID}.cloudfunctions.net/{NAME}",
    f"https://{NAME}-{NUMBER}.{REGION}.run.app",
]
CI = service_account_email("ci")
PERSON = "ada@example.com"


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return SigningKey("front-end-key")


@pytest.fixture(scope="module")
def certs(google_key: SigningKey) -> Iterator[CertsServer]:
    server = CertsServer(google_key)
    yield server
    server.stop()


def start_server(settings_env: dict[str, str], certs: CertsServer, verified: bool) -> LiveServer:
    env = dict(os.environ) | settings_env
    env |= {
        "AUTH_MODE": "iam",
        "K_SERVICE": NAME,  # as on the platform: AUTH_AUDIENCE is then required
        "AUTH_AUDIENCE": ",".join(FUNCTION_URLS),
        "AUTH_CERTS_URL": certs.url,
        "AUTH_PLATFORM_VERIFIED": "true" if verified else "false",
    }
    if env.get("HISTORY_BACKEND") == "sqlite":
        # A deploy refuses SQLite (tests/test_sqlite_store.py checks that), and this server
        # is a real process, out of conftest's reach: without K_SERVICE here. AUTH_AUDIENCE
        # lists the function's URLs anyway, so what is under test is the same.
        del env["K_SERVICE"]
    return LiveServer(env)


@pytest.fixture
def platform(
    settings_env: dict[str, str], certs: CertsServer
) -> Iterator[tuple[LiveServer, GoogleFrontEnd]]:
    server = start_server(settings_env, certs, verified=True)
    front = GoogleFrontEnd(server.port, certs.url, FUNCTION_URLS)
    yield server, front
    front.stop()
    server.stop()


def call(
    base: str, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(), error.code
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw


def test_a_service_accounts_token_for_the_function_url_gets_200_with_its_principal(
    platform: tuple[LiveServer, GoogleFrontEnd], google_key: SigningKey
) -> None:
    _, front = platform
    for url in FUNCTION_URLS:
        token = google_key.token(url, email=CI)
        session = f"ci-{len(url)}"
        status, body = call(
            front.url,
            "POST",
            "/chat",
            {"Authorization": f"Bearer {token}"},
            {"message": "hi", "session_id": session},
        )
        assert status == 200, body
        # What reached the server was the stripped token, as on Cloud Run.
        assert front.forwarded[-1]["Authorization"].endswith(".SIGNATURE_REMOVED_BY_GOOGLE")
        # The same account (a token without email, in the other header) owns it ...
        same = google_key.token(FUNCTION_URLS[0], email=None, sub=subject_of(CI))
        status, _ = call(
            front.url,
            "GET",
            f"/sessions/{session}",
            {"X-Serverless-Authorization": f"Bearer {same}"},
        )
        assert status == 200
        # ... and another account does not see it.
        other = google_key.token(url, email=service_account_email("other"))
        status, _ = call(
            front.url, "GET", f"/sessions/{session}", {"Authorization": f"Bearer {other}"}
        )
        assert status == 404


def test_a_persons_gcloud_token_in_the_serverless_header_gets_200(
    platform: tuple[LiveServer, GoogleFrontEnd], google_key: SigningKey
) -> None:
    """`gcloud auth print-identity-token` without --audiences: gcloud's client id as the
    audience, which Cloud Run accepts; the app's own Authorization passes untouched."""
    _, front = platform
    token = google_key.token(GCLOUD_CLIENT_ID, email=PERSON)
    headers = {"X-Serverless-Authorization": f"Bearer {token}", "Authorization": "Bearer app.own"}
    status, body = call(front.url, "POST", "/chat", headers, {"message": "hi", "session_id": "p"})
    assert status == 200, body
    assert front.forwarded[-1]["Authorization"] == "Bearer app.own"
    assert front.forwarded[-1]["X-Serverless-Authorization"].endswith("SIGNATURE_REMOVED_BY_GOOGLE")
    status, _ = call(front.url, "GET", "/sessions/p", {"Authorization": f"Bearer {token}"})
    assert status == 200


def test_the_front_end_refuses_what_google_would(
    platform: tuple[LiveServer, GoogleFrontEnd], google_key: SigningKey
) -> None:
    _, front = platform
    forged = SigningKey("front-end-key").token(FUNCTION_URLS[0])
    elsewhere = google_key.token("https://someone-else.a.run.app")
    for token in (forged, elsewhere, "garbage"):
        status, _ = call(
            front.url, "POST", "/chat", {"Authorization": f"Bearer {token}"}, {"message": "x"}
        )
        assert status == 401


def test_without_the_setting_stripped_tokens_are_refused(
    settings_env: dict[str, str], certs: CertsServer, google_key: SigningKey
) -> None:
    server = start_server(settings_env, certs, verified=False)
    front = GoogleFrontEnd(server.port, certs.url, FUNCTION_URLS)
    try:
        # Straight to the server: anyone can write a "stripped" token with any claims.
        forged = strip_signature(SigningKey("anyone").token(FUNCTION_URLS[0], email=CI))
        status, body = call(
            server.url, "POST", "/chat", {"Authorization": f"Bearer {forged}"}, {"message": "x"}
        )
        assert status == 401 and body["error"]["code"] == "unauthenticated"
        # Behind the front end the setting is required: this was production's every call.
        token = google_key.token(FUNCTION_URLS[1], email=CI)
        status, _ = call(
            front.url, "POST", "/chat", {"Authorization": f"Bearer {token}"}, {"message": "x"}
        )
        assert status == 401
    finally:
        front.stop()
        server.stop()
