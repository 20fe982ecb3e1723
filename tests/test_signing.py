"""Signed URLs, checked where the emulators cannot: the V4 signature itself.

Production-shaped URLs (storage.googleapis.com) are verified offline against the public
half of throw-away keys (tests/support/signed_url_verifier.py). The keyless path signs
through a loopback stand-in of IAM signBlob (tests/support/google_metadata_and_iam.py), as
Cloud Functions does.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from agent.base.settings import RESULT_INLINE_LIMIT_BYTES, Settings, SettingsError
from agent.results.signing import SigningError, UrlSigner
from agent.store.history import MAX_TURN_BYTES
from local.throwaway_key import ThrowawayKey, new_key
from tests.support.constants import PROJECT, RESULTS_SIGNER, service_account_email
from tests.support.google_metadata_and_iam import Standin
from tests.support.signed_url_verifier import Rejected, verify

BUCKET = "agent-results"
OBJECT = "results/s1/t1.md"


@pytest.fixture(scope="module")
def key() -> ThrowawayKey:
    return new_key(RESULTS_SIGNER)


@pytest.fixture(scope="module")
def other_key() -> ThrowawayKey:
    return new_key(RESULTS_SIGNER)


@pytest.fixture
def standin() -> Iterator[Standin]:
    running = Standin(new_key(service_account_email("runtime"))).start()
    yield running
    running.stop()


def production_blob(name: str = OBJECT) -> storage.Blob:
    """A blob of a client aimed at the real endpoint; signing it makes no call."""
    options = ClientOptions(api_endpoint="https://storage.googleapis.com")
    client = storage.Client(
        project=PROJECT, credentials=AnonymousCredentials(), client_options=options
    )
    return client.bucket(BUCKET).blob(name)


def key_signer(key: ThrowawayKey, ttl: int = 900) -> UrlSigner:
    creds = service_account.Credentials.from_service_account_info(key.service_account_info(PROJECT))
    return UrlSigner(creds, ttl_seconds=ttl, timeout_seconds=5)


def iam_signer(standin: Standin, account: str | None = None, timeout: float = 2) -> UrlSigner:
    """Keyless user credentials whose token comes from the stand-in."""
    creds = user_credentials.Credentials(
        token=None,
        refresh_token="refresh-token",
        token_uri=f"{standin.url}/token",
        client_id="client",
        client_secret="secret",
    )
    return UrlSigner(
        creds,
        ttl_seconds=900,
        timeout_seconds=timeout,
        service_account=account,
        iam_endpoint=standin.url,
    )


def signed(signer: UrlSigner, name: str = OBJECT) -> str:
    return signer.sign_get(production_blob(name), filename="result-t1.md")[0]


# -- a private key signs locally ---------------------------------------------------


def test_a_key_signs_a_production_url_that_verifies(key: ThrowawayKey) -> None:
    signer = key_signer(key)
    assert signer.method == "private_key"
    before = dt.datetime.now(dt.UTC)
    url, expires_at = signer.sign_get(production_blob(), filename="result-t1.md")
    assert url.startswith(f"https://storage.googleapis.com/{BUCKET}/{OBJECT}?")
    assert verify(url, key.public_pem) == key.email
    query = parse_qs(urlsplit(url).query)
    assert query["X-Goog-Expires"] == ["900"]
    assert query["response-content-disposition"] == ['attachment; filename="result-t1.md"']
    assert dt.timedelta(seconds=898) < expires_at - before <= dt.timedelta(seconds=900)


TAMPERS: dict[str, Callable[[str], str]] = {
    "path": lambda url: url.replace("/t1.md?", "/t2.md?"),
    "bucket": lambda url: url.replace(f"/{BUCKET}/", "/other-bucket/"),
    "host": lambda url: url.replace("storage.googleapis.com", "evil.example.com"),
    "expiry": lambda url: url.replace("X-Goog-Expires=900", "X-Goog-Expires=901"),
    "date": lambda url: re.sub(
        r"(X-Goog-Date=\d{8}T\d{5})(\d)", lambda m: m[1] + str((int(m[2]) + 1) % 10), url
    ),
    "extra parameter": lambda url: url.replace("?", "?generation=1&", 1),
    "missing parameter": lambda url: "&".join(
        part for part in url.split("&") if not part.startswith("response-content-disposition")
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERS), ids=list(TAMPERS))
def test_tampered_urls_are_rejected(key: ThrowawayKey, tamper: str) -> None:
    url = signed(key_signer(key))
    verify(url, key.public_pem)  # the untouched URL passes
    changed = TAMPERS[tamper](url)
    assert changed != url
    with pytest.raises(Rejected):
        verify(changed, key.public_pem)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST", "HEAD"])
def test_another_method_is_rejected(key: ThrowawayKey, method: str) -> None:
    with pytest.raises(Rejected, match="signature"):
        verify(signed(key_signer(key)), key.public_pem, method=method)


def test_another_key_is_rejected(key: ThrowawayKey, other_key: ThrowawayKey) -> None:
    url = signed(key_signer(key))
    with pytest.raises(Rejected, match="signature"):
        verify(url, other_key.public_pem)
    verify(signed(key_signer(other_key)), other_key.public_pem)


def test_an_expired_url_is_rejected(key: ThrowawayKey) -> None:
    url, expires_at = key_signer(key, ttl=60).sign_get(production_blob(), filename="r.md")
    verify(url, key.public_pem, now=expires_at - dt.timedelta(seconds=1))
    with pytest.raises(Rejected, match="expired"):
        verify(url, key.public_pem, now=expires_at + dt.timedelta(seconds=1))


# -- keyless credentials sign through IAM signBlob ---------------------------------


def test_keyless_credentials_sign_through_sign_blob(standin: Standin) -> None:
    signer = iam_signer(standin, account=standin.account.email)
    assert signer.method == "iam_sign_blob"
    urls = [signed(signer, f"results/s1/turn-{n}.md") for n in range(3)]
    for url in urls:
        assert verify(url, standin.account.public_pem) == standin.account.email
    assert standin.token_requests == 1  # refreshed first, then reused while valid
    assert [r["email"] for r in standin.sign_requests] == [standin.account.email] * 3
    assert {r["authorization"] for r in standin.sign_requests} == {"Bearer ya29.standin-1"}


def test_a_stale_token_is_refreshed_before_signing(standin: Standin) -> None:
    standin.token_seconds = 60  # inside google-auth's refresh margin: stale at once
    signer = iam_signer(standin, account=standin.account.email)
    for n in range(2):
        verify(signed(signer, f"results/s1/turn-{n}.md"), standin.account.public_pem)
    assert standin.token_requests == 2
    tokens = [r["authorization"] for r in standin.sign_requests]
    assert tokens == ["Bearer ya29.standin-1", "Bearer ya29.standin-2"]


def test_a_403_from_sign_blob_is_a_clear_error_at_once(standin: Standin) -> None:
    standin.sign_status = 403
    signer = iam_signer(standin, account=standin.account.email, timeout=10)
    started = time.monotonic()
    with pytest.raises(SigningError, match="HTTP 403"):
        signed(signer)
    assert time.monotonic() - started < 2  # not retried, not waited out
    assert len(standin.sign_requests) == 1


def test_transient_sign_blob_failures_are_retried(standin: Standin) -> None:
    standin.sign_status, standin.sign_failures = 503, 2
    url = signed(iam_signer(standin, account=standin.account.email))
    verify(url, standin.account.public_pem)
    assert len(standin.sign_requests) == 3


def test_a_hanging_sign_blob_ends_within_the_timeout(standin: Standin) -> None:
    standin.hang_seconds = 5
    started = time.monotonic()
    with pytest.raises(SigningError):
        signed(iam_signer(standin, account=standin.account.email, timeout=1))
    assert time.monotonic() - started < 2.5


def test_keyless_credentials_without_an_account_name_it(standin: Standin) -> None:
    # User credentials carry no service account: SIGNING_SERVICE_ACCOUNT must say which.
    with pytest.raises(SigningError, match="SIGNING_SERVICE_ACCOUNT"):
        signed(iam_signer(standin, account=None))
    assert standin.sign_requests == []


def test_a_key_for_another_account_signs_through_iam(key: ThrowawayKey, standin: Standin) -> None:
    creds = service_account.Credentials.from_service_account_info(key.service_account_info(PROJECT))
    signer = UrlSigner(
        creds,
        ttl_seconds=900,
        timeout_seconds=2,
        service_account=service_account_email("someone-else"),
        iam_endpoint=standin.url,
    )
    assert signer.method == "iam_sign_blob"


def test_ttl_beyond_the_method_is_refused(key: ThrowawayKey, standin: Standin) -> None:
    with pytest.raises(SigningError):
        key_signer(key, ttl=7 * 86400 + 1)
    key_signer(key, ttl=7 * 86400)
    creds = user_credentials.Credentials(token="t")
    with pytest.raises(SigningError):
        UrlSigner(creds, ttl_seconds=12 * 3600 + 1, timeout_seconds=1)


# -- the settings that go with it ----------------------------------------------------


def test_result_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.results_bucket is None
    assert settings.result_inline_max_bytes == 262_144
    assert settings.signed_url_ttl_seconds == 900
    assert settings.storage_timeout_seconds == 10.0
    assert settings.iam_credentials_endpoint == "https://iamcredentials.googleapis.com"


def test_the_inline_limit_keeps_an_inline_answer_within_one_turn_commit() -> None:
    # An inline answer goes whole into the history; escaping may double quotes and
    # newlines, and the user's message (up to the request limit) joins it.
    assert 1.25 * RESULT_INLINE_LIMIT_BYTES + 256 * 1024 < MAX_TURN_BYTES
    assert 4 * RESULT_INLINE_LIMIT_BYTES < 10_000_000  # \\u escapes, streamed limit


def key_file(tmp_path: Path, key: ThrowawayKey) -> str:
    return str(key.write(tmp_path, PROJECT))


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"RESULT_INLINE_MAX_BYTES": str(RESULT_INLINE_LIMIT_BYTES + 1)}, "RESULT_INLINE_MAX"),
        ({"RESULT_INLINE_MAX_BYTES": "33554432"}, "RESULT_INLINE_MAX_BYTES"),  # 32 MB
        ({"RESULT_INLINE_MAX_BYTES": "100"}, "RESULT_INLINE_MAX_BYTES"),
        ({"SIGNED_URL_TTL_SECONDS": "0"}, "SIGNED_URL_TTL_SECONDS"),
        ({"SIGNED_URL_TTL_SECONDS": "604801"}, "SIGNED_URL_TTL_SECONDS"),
        ({"RESULTS_BUCKET": "bucket", "SIGNED_URL_TTL_SECONDS": "43201"}, "IAM signBlob"),
        ({"STORAGE_TIMEOUT_SECONDS": "0.1"}, "STORAGE_TIMEOUT_SECONDS"),
        ({"IAM_CREDENTIALS_ENDPOINT": "http://iam.example.com"}, "IAM_CREDENTIALS_ENDPOINT"),
        ({"RESULTS_BUCKET": "Not A Bucket"}, "RESULTS_BUCKET"),
        (
            {"RESULTS_BUCKET": "bucket", "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent.json"},
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ],
)
def test_bad_result_settings_fail_at_startup(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_the_url_lifetime_limit_follows_the_signing_method(
    tmp_path: Path, key: ThrowawayKey
) -> None:
    with_key = {
        "RESULTS_BUCKET": "agent-results",
        "GOOGLE_APPLICATION_CREDENTIALS": key_file(tmp_path, key),
    }
    assert Settings.from_env(with_key | {"SIGNED_URL_TTL_SECONDS": "604800"})
    with pytest.raises(SettingsError, match="private key"):
        Settings.from_env(with_key | {"SIGNED_URL_TTL_SECONDS": "604801"})
    assert Settings.from_env({"RESULTS_BUCKET": "bucket", "SIGNED_URL_TTL_SECONDS": "43200"})
    # A key that is not the signing account's: IAM signs, so hours, not days.
    other = with_key | {"SIGNING_SERVICE_ACCOUNT": service_account_email("other")}
    with pytest.raises(SettingsError, match="IAM signBlob"):
        Settings.from_env(other | {"SIGNED_URL_TTL_SECONDS": "86400"})
    loopback = {"IAM_CREDENTIALS_ENDPOINT": "http://127.0.0.1:1234"}
    assert Settings.from_env(loopback).iam_credentials_endpoint == "http://127.0.0.1:1234"
