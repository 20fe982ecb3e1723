"""V4 signed GET URLs for result objects, signed the way Cloud Functions can sign.

The method follows from the credentials:

* ``private_key``: credentials holding an RSA private key (a service-account key file,
  the local run's throw-away key) sign on this machine, without a network call.
* ``iam_sign_blob``: keyless credentials (Cloud Functions' runtime service account,
  ``gcloud auth application-default login``) cannot sign: with them the library's
  usual ``generate_signed_url`` fails in production while passing every local test.
  The IAM Credentials API's ``signBlob`` signs for the service account instead
  (``sign_blob.py``). The library's own signBlob path is not used: its endpoint is
  fixed, it has no timeout (a hang lasts minutes), and it reuses no token.

URLs live at most 7 days with a key and 12 hours through IAM.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Literal

import google.auth
from google.auth import credentials as gcreds
from google.auth import crypt
from google.auth import exceptions as gauth_exceptions

from agent.base.settings import IAM_SIGNED_URL_MAX_SECONDS, KEY_SIGNED_URL_MAX_SECONDS, Settings
from agent.results.sign_blob import SignBlobError, SignBlobSigner

if TYPE_CHECKING:
    from google.cloud.storage import Blob

log = logging.getLogger(__name__)

Method = Literal["private_key", "iam_sign_blob"]
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


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
            self._signing = SignBlobSigner(
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
        except SignBlobError as exc:
            raise SigningError(str(exc)) from exc
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
