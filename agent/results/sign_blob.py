"""IAM Credentials ``signBlob`` as a google-auth signer, for keyless credentials.

Cloud Functions' runtime credentials hold no private key; signBlob signs for the
service account instead. Here it is a ``google.auth.credentials.Signing`` object, so
``Blob.generate_signed_url(credentials=...)`` uses it like a key. The token is
refreshed first (metadata-server credentials report the email "default" and no token
until then) and reused while valid. Every call, refreshes included, is bounded by
the timeout; 429 and 5xx are retried within it, other statuses are final (403: the
account lacks ``iam.serviceAccounts.signBlob`` on itself, logged with the fix).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import quote

from google.auth import credentials as gcreds
from google.auth import crypt
from google.auth import exceptions as gauth_exceptions
from google.auth.transport.requests import Request

log = logging.getLogger(__name__)

_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class SignBlobError(Exception):
    """signBlob refused, failed or did not answer in time; text for the log only."""


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


class SignBlobSigner(gcreds.Signing, crypt.Signer):
    """Signs as ``account`` (or the credentials' own account) through signBlob."""

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
                raise SignBlobError("no service account to sign as; set SIGNING_SERVICE_ACCOUNT")
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
            except (KeyError, ValueError):
                raise SignBlobError("signBlob answered 200 without a signature") from None
            if status and status not in _RETRIED_STATUSES:
                if status == 403:
                    log.error(
                        "signBlob refused (403): grant %s a role holding"
                        " iam.serviceAccounts.signBlob on itself (deploy/setup.sh creates one)"
                        " and enable the IAM Service Account Credentials API",
                        email,
                    )
                raise SignBlobError(f"signBlob answered HTTP {status}")
            if time.monotonic() + delay >= give_up:
                raise SignBlobError(f"signBlob unavailable (last status {status or 'none'})")
            time.sleep(delay)
            delay *= 2

    def _fresh_token(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                try:
                    self._credentials.refresh(self._request)  # type: ignore[no-untyped-call]
                except gauth_exceptions.GoogleAuthError as exc:
                    raise SignBlobError(f"token refresh failed: {type(exc).__name__}") from exc
            return str(self._credentials.token)
