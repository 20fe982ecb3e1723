"""Who may call: identity tokens verified against a local stand-in of Google's key
endpoint, API keys, and the local-only mode that refuses to run on the platform."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient

from agent.auth import google_tokens
from agent.auth.modes import parse_api_keys
from agent.base.settings import Settings, SettingsError
from local.demo_model import DemoModelServer
from tests.support.constants import ALICE_KEY, BOB_KEY, LOOPBACK, REPO_ROOT, UNREACHABLE_MODEL_URL
from tests.support.google_id_tokens import (
    CertsServer,
    SigningKey,
    strip_signature,
    subject_of,
)
from tests.support.openapi_contract import assert_conforms

AUDIENCE = "https://agent-abc123-uc.a.run.app"


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    return SigningKey("key-1")


@pytest.fixture(scope="module")
def stranger_key() -> SigningKey:
    return SigningKey("key-1")  # same key id, different key: a forgery


@pytest.fixture
def certs(google_key: SigningKey) -> Iterator[CertsServer]:
    server = CertsServer(google_key)
    yield server
    server.stop()


@pytest.fixture
def iam_client(make_client: Callable[..., FlaskClient], certs: CertsServer) -> FlaskClient:
    return make_client(auth_mode="iam", auth_audience=AUDIENCE, auth_certs_url=certs.url)


def chat(client: FlaskClient, token: str | None, **body: str):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/chat", json={"message": "hi", **body}, headers=headers)


def check_401(response, path: str = "/chat", method: str = "POST") -> str:
    assert response.status_code == 401, response.get_json()
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert_conforms(method, path, 401, response.get_json(), response.headers)
    return response.headers["WWW-Authenticate"]


def test_a_valid_token_is_accepted_and_names_the_principal(
    iam_client: FlaskClient, google_key: SigningKey
) -> None:
    token = google_key.token(AUDIENCE, email="alice@example.com")
    response = chat(iam_client, token, session_id="s1")
    assert response.status_code == 200, response.get_json()
    headers = {"Authorization": f"Bearer {token}"}
    assert iam_client.get("/sessions/s1", headers=headers).status_code == 200
    other = google_key.token(AUDIENCE, email="bob@example.com")
    response = iam_client.get("/sessions/s1", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404  # the principal came from the token


def test_missing_token_is_401_with_a_bearer_challenge(
    iam_client: FlaskClient, model: DemoModelServer
) -> None:
    for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer"}):
        response = iam_client.post("/chat", json={"message": "hi"}, headers=headers)
        assert check_401(response) == 'Bearer realm="agent"'
    for method in ("GET", "DELETE"):
        check_401(iam_client.open("/sessions/abc", method=method), "/sessions/abc", method)
    assert model.request_count == 0


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda k: k.token(AUDIENCE, issued_ago=7200, lifetime=3600), "expired"),
        (lambda k: k.token("https://someone-else.a.run.app"), "wrong audience"),
        (lambda k: k.token(AUDIENCE, issuer="https://evil.example.com"), "issuer"),
        (lambda k: k.token(AUDIENCE, kid="key-unknown"), "unknown key id"),
        (lambda k: k.token(AUDIENCE)[:-8] + "AAAAAAAA", "bad signature"),
        (lambda k: "not-a-jwt", "not a JWT"),
    ],
    ids=["expired", "audience", "issuer", "kid", "tampered", "garbage"],
)
def test_bad_tokens_are_401_invalid_token(
    iam_client: FlaskClient, google_key: SigningKey, make_token, reason: str
) -> None:
    token = make_token(google_key)
    challenge = check_401(chat(iam_client, token))
    assert 'error="invalid_token"' in challenge and reason in challenge


def test_a_token_signed_by_another_key_is_401(
    iam_client: FlaskClient, stranger_key: SigningKey
) -> None:
    challenge = check_401(chat(iam_client, stranger_key.token(AUDIENCE)))
    assert "bad signature" in challenge


def test_unsigned_and_hmac_tokens_are_refused(
    iam_client: FlaskClient, google_key: SigningKey
) -> None:
    import base64
    import json

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    payload = google_key.token(AUDIENCE).split(".")[1]
    for alg in ("none", "HS256"):
        forged = f"{b64({'alg': alg, 'kid': 'key-1'})}.{payload}.c2ln"
        assert "not RS256" in check_401(chat(iam_client, forged))


def test_keys_are_fetched_once_for_many_requests(
    iam_client: FlaskClient, certs: CertsServer, google_key: SigningKey
) -> None:
    for _ in range(5):
        assert chat(iam_client, google_key.token(AUDIENCE)).status_code == 200
    assert certs.fetches == 1
    # Made-up key ids do not make us fetch again (at most once per 30 s).
    for n in range(3):
        check_401(chat(iam_client, google_key.token(AUDIENCE, kid=f"made-up-{n}")))
    assert certs.fetches == 1


def test_a_new_key_id_triggers_one_early_refetch(
    certs: CertsServer, google_key: SigningKey
) -> None:
    clock = [0.0]
    cache = google_tokens.CertCache(certs.url, clock=lambda: clock[0])
    google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
    rotated = SigningKey("key-2")
    certs.keys.append(rotated)  # Google publishes a new key; tokens start using it
    with pytest.raises(google_tokens.InvalidToken, match="unknown key id"):
        google_tokens.verify(rotated.token(AUDIENCE), cache, [AUDIENCE])  # within 30 s
    clock[0] = 31
    assert google_tokens.verify(rotated.token(AUDIENCE), cache, [AUDIENCE])["aud"] == AUDIENCE
    assert certs.fetches == 2


def test_unreachable_key_endpoint_is_503_and_stale_keys_still_serve(
    make_client: Callable[..., FlaskClient], certs: CertsServer, google_key: SigningKey
) -> None:
    certs.failing = True
    client = make_client(auth_mode="iam", auth_audience=AUDIENCE, auth_certs_url=certs.url)
    response = chat(client, google_key.token(AUDIENCE))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "auth_unavailable"
    assert_conforms("POST", "/chat", 503, response.get_json(), response.headers)
    certs.failing = False
    time.sleep(1.1)  # a failed fetch backs off 1 s before the next attempt
    assert chat(client, google_key.token(AUDIENCE)).status_code == 200


def test_cache_expiry_follows_max_age(certs: CertsServer, google_key: SigningKey) -> None:
    clock = [0.0]
    certs.max_age = 60
    cache = google_tokens.CertCache(certs.url, clock=lambda: clock[0])
    google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
    clock[0] = 59
    google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
    assert certs.fetches == 1
    clock[0] = 61
    google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
    assert certs.fetches == 2


def test_off_the_platform_only_a_loopback_host_yields_an_audience(
    make_client: Callable[..., FlaskClient], certs: CertsServer, google_key: SigningKey
) -> None:
    """Issue 10 item 2: Host is the caller's to write, so a token minted for another
    service must not pass by naming that service's host."""
    client = make_client(auth_mode="iam", auth_certs_url=certs.url)
    for base, audience in (
        ("http://127.0.0.1:8080", "https://127.0.0.1:8080"),
        ("http://localhost:8080", "https://localhost:8080/"),
    ):
        headers = {"Authorization": f"Bearer {google_key.token(audience)}"}
        response = client.post("/chat", json={"message": "hi"}, headers=headers, base_url=base)
        assert response.status_code == 200, (base, response.get_json())
    other_service = google_key.token("https://other-service.example.com")
    response = client.post(
        "/chat",
        json={"message": "hi"},
        headers={"Authorization": f"Bearer {other_service}"},
        base_url="http://other-service.example.com",
    )
    assert "no audience configured" in check_401(response)


def test_an_empty_host_is_400(
    make_client: Callable[..., FlaskClient], certs: CertsServer, google_key: SigningKey
) -> None:
    client = make_client(auth_mode="iam", auth_certs_url=certs.url)
    response = client.post(
        "/chat",
        json={"message": "hi"},
        headers={"Authorization": f"Bearer {google_key.token('https://x')}"},
        environ_overrides={"HTTP_HOST": ""},
    )
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_host"


def test_on_the_platform_iam_needs_an_explicit_audience() -> None:
    with pytest.raises(SettingsError, match="AUTH_AUDIENCE is required"):
        Settings.from_env({"K_SERVICE": "agent"})
    settings = Settings.from_env({"K_SERVICE": "agent", "AUTH_AUDIENCE": AUDIENCE})
    assert settings.auth_audience == AUDIENCE
    refused = run_main({"K_SERVICE": "agent", "AUTH_MODE": "iam"})
    assert refused.returncode != 0 and "AUTH_AUDIENCE" in refused.stderr


# -- tokens Google's front end has verified (signature removed) --------------------


GCLOUD_AUDIENCE = "32555940559.apps.googleusercontent.com"
"""The audience of ``gcloud auth print-identity-token`` without --audiences: gcloud's
OAuth client id (googlecloudsdk/core/config.py CLOUDSDK_CLIENT_ID)."""


def test_a_stripped_token_is_401_unless_the_platform_verified_it(
    iam_client: FlaskClient, google_key: SigningKey
) -> None:
    stripped = strip_signature(google_key.token(AUDIENCE))
    assert "signature removed" in check_401(chat(iam_client, stripped))


@pytest.fixture
def platform_client(make_client: Callable[..., FlaskClient], certs: CertsServer) -> FlaskClient:
    return make_client(
        auth_mode="iam",
        auth_audience=AUDIENCE,
        auth_certs_url=certs.url,
        auth_platform_verified="true",
    )


def test_a_stripped_token_checks_issuer_and_expiry_but_not_audience(
    platform_client: FlaskClient, google_key: SigningKey, stranger_key: SigningKey
) -> None:
    # The platform accepted gcloud's audience for a person's token; so do we.
    person = strip_signature(google_key.token(GCLOUD_AUDIENCE, email="ada@example.com"))
    assert chat(platform_client, person, session_id="p1").status_code == 200
    for bad, reason in (
        (google_key.token(AUDIENCE, issued_ago=7200, lifetime=3600), "expired"),
        (google_key.token(AUDIENCE, issuer="https://evil.example.com"), "issuer"),
        (google_key.token(AUDIENCE, issued_ago=-600), "not yet valid"),
    ):
        assert reason in check_401(chat(platform_client, strip_signature(bad)))
    # Within the clock skew, as for signed tokens.
    almost = google_key.token(AUDIENCE, issued_ago=3610, lifetime=3600)
    assert chat(platform_client, strip_signature(almost)).status_code == 200
    # Signed tokens keep full verification with the setting on.
    assert "bad signature" in check_401(chat(platform_client, stranger_key.token(AUDIENCE)))
    assert "wrong audience" in check_401(chat(platform_client, google_key.token(GCLOUD_AUDIENCE)))


def test_the_serverless_header_is_read_first(
    platform_client: FlaskClient, google_key: SigningKey
) -> None:
    alice = strip_signature(google_key.token(AUDIENCE, email="alice@example.com"))
    bob = strip_signature(google_key.token(AUDIENCE, email="bob@example.com"))
    both = {"X-Serverless-Authorization": f"Bearer {alice}", "Authorization": "Bearer app.own"}
    response = platform_client.post(
        "/chat", json={"message": "hi", "session_id": "h1"}, headers=both
    )
    assert response.status_code == 200, response.get_json()
    as_alice = {"Authorization": f"Bearer {alice}"}
    assert platform_client.get("/sessions/h1", headers=as_alice).status_code == 200
    as_bob = {"X-Serverless-Authorization": f"Bearer {bob}", "Authorization": f"Bearer {alice}"}
    assert platform_client.get("/sessions/h1", headers=as_bob).status_code == 404


# -- one caller, one principal ------------------------------------------------------


def test_a_token_with_or_without_email_names_the_same_principal(
    iam_client: FlaskClient, google_key: SigningKey
) -> None:
    """Issue 10 item 8: tokens minted without includeEmail carry no email; the session
    must not read as absent to the same account's other tokens."""
    with_email = google_key.token(AUDIENCE, email="ci@proj.iam.gserviceaccount.com")
    sub = subject_of("ci@proj.iam.gserviceaccount.com")
    without = google_key.token(AUDIENCE, email=None, sub=sub)
    assert chat(iam_client, with_email, session_id="same").status_code == 200
    response = iam_client.get("/sessions/same", headers={"Authorization": f"Bearer {without}"})
    assert response.status_code == 200, response.get_json()


def test_the_allow_list_names_an_email_or_a_sub(
    make_client: Callable[..., FlaskClient], certs: CertsServer, google_key: SigningKey
) -> None:
    ci_sub = subject_of("ci@proj.iam.gserviceaccount.com")
    client = make_client(
        auth_mode="iam",
        auth_audience=AUDIENCE,
        auth_certs_url=certs.url,
        auth_allowed_principals=f"alice@example.com, sub:{ci_sub}",
    )
    ci_without_email = google_key.token(AUDIENCE, email=None, sub=ci_sub)
    ci_with_email = google_key.token(AUDIENCE, email="ci@proj.iam.gserviceaccount.com")
    alice_without_email = google_key.token(
        AUDIENCE, email=None, sub=subject_of("alice@example.com")
    )
    assert chat(client, ci_without_email).status_code == 200
    assert chat(client, ci_with_email).status_code == 200
    assert chat(client, google_key.token(AUDIENCE, email="alice@example.com")).status_code == 200
    # An email the token does not carry cannot be matched: name such accounts by sub.
    assert chat(client, alice_without_email).status_code == 403
    # An unverified email names nobody.
    unverified = google_key.token(
        AUDIENCE, email="alice@example.com", sub="999", email_verified=False
    )
    assert chat(client, unverified).status_code == 403


# -- the key cache under failure ----------------------------------------------------


def test_a_failing_key_endpoint_is_fetched_once_by_concurrent_calls_then_backs_off(
    certs: CertsServer, google_key: SigningKey
) -> None:
    """Issue 10 item 6: 8 concurrent calls used to make 9 serialised fetches."""
    certs.failing = True
    cache = google_tokens.CertCache(certs.url)
    start = threading.Barrier(8)

    def one() -> str:
        start.wait()
        try:
            google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
        except google_tokens.CertsUnavailable:
            return "unavailable"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: one(), range(8)))
    assert outcomes == ["unavailable"] * 8
    assert certs.fetches == 1
    for _ in range(5):  # within the backoff: no new fetch
        with pytest.raises(google_tokens.CertsUnavailable):
            google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
    assert certs.fetches == 1


def test_the_fetch_runs_outside_the_lock(google_key: SigningKey) -> None:
    """While one (slow) refetch runs, callers holding keys are answered at once."""
    clock = [0.0]
    gate = threading.Event()
    certs = CertsServer(google_key, max_age=60)
    try:
        cache = google_tokens.CertCache(certs.url, clock=lambda: clock[0])
        google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
        clock[0] = 61  # stale: the next call refetches
        certs.delay = gate  # the stand-in now waits for the gate before answering
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(google_tokens.verify, google_key.token(AUDIENCE), cache, [AUDIENCE])
            time.sleep(0.2)
            started = time.monotonic()
            google_tokens.verify(google_key.token(AUDIENCE), cache, [AUDIENCE])
            assert time.monotonic() - started < 0.5
            gate.set()
            slow.result(timeout=10)
        assert certs.fetches == 2
    finally:
        gate.set()
        certs.stop()


def test_principals_outside_the_allow_list_are_403(
    make_client: Callable[..., FlaskClient], certs: CertsServer, google_key: SigningKey
) -> None:
    client = make_client(
        auth_mode="iam",
        auth_audience=AUDIENCE,
        auth_certs_url=certs.url,
        auth_allowed_principals="ci@proj.iam.gserviceaccount.com, alice@example.com",
    )
    assert chat(client, google_key.token(AUDIENCE, email="alice@example.com")).status_code == 200
    response = chat(client, google_key.token(AUDIENCE, email="mallory@example.com"))
    assert response.status_code == 403
    assert_conforms("POST", "/chat", 403, response.get_json(), response.headers)


def test_healthz_needs_no_credential(iam_client: FlaskClient) -> None:
    assert iam_client.get("/healthz").status_code == 200


def test_tokens_never_reach_the_log(
    iam_client: FlaskClient, google_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good, expired = google_key.token(AUDIENCE), google_key.token(AUDIENCE, issued_ago=9999)
    chat(iam_client, good)
    chat(iam_client, expired)
    logged = "\n".join(str(r.__dict__) for r in caplog.records)
    assert f"sub:{subject_of('alice@example.com')}" in logged  # the principal is there
    for token in (good, expired):
        for part in token.split("."):
            assert part not in logged


# -- API keys ------------------------------------------------------------------------


@pytest.fixture
def key_client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(auth_mode="api_key", auth_api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}")


def test_api_keys_map_to_principals(key_client: FlaskClient) -> None:
    alice, bob = {"X-API-Key": ALICE_KEY}, {"X-API-Key": BOB_KEY}
    assert (
        key_client.post(
            "/chat", json={"message": "a", "session_id": "k"}, headers=alice
        ).status_code
        == 200
    )
    assert key_client.get("/sessions/k", headers=alice).status_code == 200
    assert key_client.get("/sessions/k", headers=bob).status_code == 404


@pytest.mark.parametrize(
    "headers", [{}, {"X-API-Key": "wrong-key-0123456789"}, {"X-API-Key": ALICE_KEY[:-1]}]
)
def test_missing_or_wrong_api_key_is_401(
    key_client: FlaskClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    challenge = check_401(key_client.post("/chat", json={"message": "a"}, headers=headers))
    assert challenge == 'ApiKey realm="agent", header="X-API-Key"'
    assert ALICE_KEY not in caplog.text and "wrong-key" not in caplog.text


def test_api_keys_parse_from_pairs_or_json() -> None:
    expected = {"alice": ALICE_KEY, "bob": BOB_KEY}
    assert parse_api_keys(f"alice:{ALICE_KEY}, bob:{BOB_KEY}") == expected
    assert parse_api_keys(f'{{"alice": "{ALICE_KEY}", "bob": "{BOB_KEY}"}}') == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ALICE_KEY,  # a key without a name
        "alice:short",
        f"alice:{ALICE_KEY},alice:{BOB_KEY}",
        f"alice:{ALICE_KEY},bob:{ALICE_KEY}",
        "{not json",
        f'["{ALICE_KEY}"]',
        f"al ice:{ALICE_KEY}",
    ],
)
def test_malformed_api_keys_fail_at_startup_without_quoting_keys(raw: str) -> None:
    with pytest.raises(SettingsError, match="AUTH_API_KEYS") as caught:
        parse_api_keys(raw)
    assert ALICE_KEY not in str(caught.value) and BOB_KEY not in str(caught.value)


def test_api_key_mode_without_keys_fails_at_startup() -> None:
    with pytest.raises(SettingsError, match="AUTH_API_KEYS"):
        Settings.from_env({"AUTH_MODE": "api_key"})


def test_keys_are_not_in_the_settings_repr() -> None:
    settings = Settings.from_env({"AUTH_MODE": "api_key", "AUTH_API_KEYS": f"a:{ALICE_KEY}"})
    assert ALICE_KEY not in repr(settings)


# -- local mode --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"AUTH_MODE": "none", "K_SERVICE": "agent"}, "K_SERVICE"),
        ({"AUTH_MODE": "sometimes"}, "AUTH_MODE"),
        ({"AUTH_CERTS_URL": "http://certs.example.com/"}, "AUTH_CERTS_URL"),
        ({"CORS_ALLOWED_ORIGINS": "*"}, "CORS_ALLOWED_ORIGINS"),
        ({"CORS_ALLOWED_ORIGINS": "https://a.example.com/path"}, "CORS_ALLOWED_ORIGINS"),
    ],
)
def test_unsafe_access_settings_fail_at_startup(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)


def test_none_on_the_platform_needs_forcing() -> None:
    env = {"AUTH_MODE": "none", "K_SERVICE": "agent", "AUTH_FORCE_NONE_ON_CLOUD": "true"}
    assert Settings.from_env(env).auth_mode == "none"
    assert Settings.from_env({}).auth_mode == "iam"  # secure by default


def test_none_forced_on_the_platform_answers_its_public_host(
    make_client: Callable[..., FlaskClient],
) -> None:
    """The loopback-only Host check of AUTH_MODE=none is for a developer's machine; a
    deploy forced to run without authentication is reached under its own name."""
    client = make_client(auth_mode="none", k_service="agent", auth_force_none_on_cloud="true")
    response = client.post("/chat", json={"message": "hi"}, base_url="https://agent.example.com")
    assert response.status_code == 200, response.get_json()


def run_main(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import main; print('STARTED')"
    full = {k: v for k, v in os.environ.items() if k not in ("K_SERVICE", "AUTH_MODE")}
    full |= {"OPENAI_BASE_URL": UNREACHABLE_MODEL_URL, "GOOGLE_CLOUD_PROJECT": "p", **env}
    # Only startup is under test: a Firestore client pointed at a port nobody answers is
    # built without credentials, which a machine without the emulator does not have.
    full.setdefault("FIRESTORE_EMULATOR_HOST", f"{LOOPBACK}:9")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_process_refuses_to_start_with_none_on_the_platform_and_says_why() -> None:
    refused = run_main({"AUTH_MODE": "none", "K_SERVICE": "agent"})
    assert refused.returncode != 0 and "STARTED" not in refused.stdout
    assert (
        "AUTH_MODE=none refused" in refused.stderr and "AUTH_FORCE_NONE_ON_CLOUD" in refused.stderr
    )
    forced = run_main({"AUTH_MODE": "none", "K_SERVICE": "agent", "AUTH_FORCE_NONE_ON_CLOUD": "1"})
    assert forced.returncode == 0 and "STARTED" in forced.stdout, forced.stderr
    assert "AUTHENTICATION IS OFF" in forced.stdout  # a WARNING line in the JSON log
