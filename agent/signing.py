"""V4 signed GET URLs for result objects, signed the way Cloud Functions can sign.

The method follows from the credentials:

* ``private_key``: credentials holding an RSA private key (a service-account key file,
  the local run's throw-away key) sign on this machine, without a network call.
* ``iam_sign_blob``: keyless credentials (Cloud Functions' runtime service account,
  ``gcloud auth application-default login``) cannot sign, so ``generate_signed_url``
  would fail in production while passing every local test. The IAM Credentials API's
  ``signBlob`` signs for the service account instead. The token is refreshed first
  (metadata-server credentials report the email "default" and no token until then)
  and reused while valid. Each URL costs one signBlob call, bounded by
  ``STORAGE_TIMEOUT_SECONDS``; a 4xx (403: the account lacks
  ``roles/iam.serviceAccountTokenCreator`` on itself) is final and not retried.

The library's own signBlob path cannot be used: its endpoint is fixed, it has no
timeout (a hang lasts minutes) and its error text is all a caller would get.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import google.auth
from google.auth import credentials as gcreds
from google.auth import crypt
from google.auth import exceptions as gauth_exceptions
from google.auth.transport.requests import Request

from .settings import IAM_SIGNED_URL_MAX_SECONDS, KEY_SIGNED_URL_MAX_SECONDS, Settings

if TYPE_CHECKING:
    from google.cloud.storage import Blob

log = logging.getLogger(__name__)

Method = Literal["private_key", "iam_sign_blob"]
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class SigningError(Exception):
    """A URL could not be signed; the message is for the log, never for callers."""


class UrlSigner:
    """Signs V4 GET URLs valid for ``ttl_seconds``. Thread-safe."""

    def __init__(
        self,
        credentials: gcreds.Credentials,
        *,
        ttl_seconds: int,
        timeout_seconds: float,
        service_account: str | None = None,
        iam_endpoint: str = "https://iamcredentials.googleapis.com",
    ) -> None:
        self._ttl = ttl_seconds
        email = getattr(credentials, "service_account_email", None)
        if _holds_private_key(credentials) and service_account in (None, email):
            self.method: Method = "private_key"
            self._signing: gcreds.Signing = credentials  # type: ignore[assignment]
        else:
            self.method = "iam_sign_blob"
            self._signing = _IamSigner(
                credentials, service_account, iam_endpoint.rstrip("/"), timeout_seconds
            )
        private = self.method == "private_key"
        limit = KEY_SIGNED_URL_MAX_SECONDS if private else IAM_SIGNED_URL_MAX_SECONDS
        if not 1 <= ttl_seconds <= limit:
            raise SigningError(f"a {ttl_seconds} s URL is beyond {self.method}'s {limit} s")

    def sign_get(self, blob: Blob, *, filename: str) -> tuple[str, dt.datetime]:
        """A URL that GETs ``blob`` as an attachment named ``filename``, and its expiry."""
        # X-Goog-Date has whole seconds; the URL never outlives the time reported.
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        try:
            url: str = blob.generate_signed_url(
                version="v4",
                expiration=dt.timedelta(seconds=self._ttl),
                method="GET",
                credentials=self._signing,
                response_disposition=f'attachment; filename="{filename}"',
            )
        except SigningError:
            raise
        except (gauth_exceptions.GoogleAuthError, ValueError, AttributeError) as exc:
            raise SigningError(f"{self.method}: {type(exc).__name__}") from exc
        return url, now + dt.timedelta(seconds=self._ttl)


def load_signer(settings: Settings) -> UrlSigner:
    """The signer for the configured credentials; makes no call until the first URL
    (except that discovering runtime credentials may ask the metadata server)."""
    try:
        if settings.google_application_credentials:
            credentials, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                settings.google_application_credentials, scopes=SCOPES
            )
        else:
            credentials, _ = google.auth.default(scopes=SCOPES)
    except gauth_exceptions.GoogleAuthError as exc:
        raise SigningError(f"no credentials: {type(exc).__name__}") from exc
    signer = UrlSigner(
        credentials,
        ttl_seconds=settings.signed_url_ttl_seconds,
        timeout_seconds=settings.storage_timeout_seconds,
        service_account=settings.signing_service_account,
        iam_endpoint=settings.iam_credentials_endpoint,
    )
    log.info("result URLs are signed with %s", signer.method)
    return signer


def _holds_private_key(credentials: gcreds.Credentials) -> bool:
    return isinstance(credentials, gcreds.Signing) and isinstance(
        getattr(credentials, "signer", None), crypt.RSASigner
    )


class _BoundedRequest(Request):
    """google-auth's transport with every call capped, token refreshes included (their
    default timeout is 120 s)."""

    def __init__(self, cap_seconds: float) -> None:
        super().__init__()
        self._cap = cap_seconds

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        bounded = min(timeout or self._cap, self._cap)
        return super().__call__(url, method, body, headers, timeout=bounded, **kwargs)  # type: ignore[no-untyped-call]


class _IamSigner(gcreds.Signing, crypt.Signer):
    """Signs through IAM signBlob with keyless credentials."""

    def __init__(
        self, credentials: gcreds.Credentials, account: str | None, endpoint: str, timeout: float
    ) -> None:
        self._credentials = credentials
        self._account = account
        self._endpoint = endpoint
        self._timeout = timeout
        self._request = _BoundedRequest(timeout)
        self._lock = threading.Lock()

    # -- google.auth.credentials.Signing, what generate_signed_url uses -------------

    @property
    def signer_email(self) -> str:
        if self._account is None:
            self._fresh_token()  # the metadata server names the account only after a refresh
            email = getattr(self._credentials, "service_account_email", None)
            if not email or email == "default":
                raise SigningError("no service account to sign as; set SIGNING_SERVICE_ACCOUNT")
            self._account = str(email)
        return self._account

    @property
    def signer(self) -> crypt.Signer:
        return self

    def sign_bytes(self, message: bytes) -> bytes:
        return self.sign(message)

    # -- google.auth.crypt.Signer --------------------------------------------------

    @property
    def key_id(self) -> str | None:
        return None  # IAM picks the key

    def sign(self, message: str | bytes) -> bytes:
        payload = message.encode() if isinstance(message, str) else message
        email = self.signer_email
        url = f"{self._endpoint}/v1/projects/-/serviceAccounts/{quote(email)}:signBlob"
        body = json.dumps({"payload": base64.b64encode(payload).decode()}).encode()
        give_up = time.monotonic() + self._timeout
        delay = 0.2
        while True:
            headers = {
                "Authorization": f"Bearer {self._fresh_token()}",
                "Content-Type": "application/json",
            }
            status = 0
            left = max(0.1, give_up - time.monotonic())
            try:
                response = self._request(url, "POST", body, headers, timeout=left)
                status = response.status
                if status == 200:
                    return base64.b64decode(json.loads(response.data)["signedBlob"])
            except gauth_exceptions.TransportError:
                pass  # connection refused, reset or timed out: retried like a 503
            if status and status not in _RETRIED_STATUSES:
                if status == 403:
                    log.error(
                        "signBlob refused (403): grant %s roles/iam.serviceAccountTokenCreator"
                        " on itself and enable the IAM Service Account Credentials API",
                        email,
                    )
                raise SigningError(f"signBlob answered HTTP {status}")
            if time.monotonic() + delay >= give_up:
                raise SigningError(f"signBlob unavailable (last status {status or 'none'})")
            time.sleep(delay)
            delay *= 2

    def _fresh_token(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                try:
                    self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
                except gauth_exceptions.GoogleAuthError as exc:
                    raise SigningError(f"token refresh failed: {type(exc).__name__}") from exc
            return str(self._credentials.token)
