"""OAuth access tokens for Vertex AI, from Application Default Credentials.

Vertex AI's OpenAI-compatible endpoint takes a short-lived access token where OpenAI
takes a key, so ``MODEL_PROVIDER=vertex`` needs no secret at all: on Cloud Functions
the token is the runtime service account's, from the metadata server; on a
developer's machine it is theirs (``gcloud auth application-default login``).

* The OpenAI client asks for the token before every request (``api_key`` given as an
  async callable); this hands out the cached one and refreshes it only when it is
  within ``REFRESH_MARGIN`` of expiry (a quarter of its lifetime for short-lived
  tokens), so a busy instance fetches one token per token lifetime, not per request.
* Concurrent requests that find the token stale wait for one refresh: the first
  refreshes, the others reuse its result.
* Nothing is fetched at startup: ``google.auth.default()`` itself talks to the
  metadata server, so it runs on the first model call, in a worker thread (google-auth
  is blocking I/O and the event loop serves every other turn meanwhile).
* The token is never logged. A google-auth failure (no credentials found, the token
  endpoint refusing, the metadata server unreachable) is logged by exception type only
  and raised as ``TokenRefreshFailed``, which the turn answers as the model provider
  failing (502 ``model_error``): without a token the provider cannot be asked. The
  original exception is not chained, so no traceback (with its URLs) reaches the log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from agent.base.clock import utc_now

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = dt.timedelta(minutes=5)

CredentialsFactory = Callable[[], Any]


class TokenRefreshFailed(Exception):
    """No access token for Vertex AI: google-auth failed (its type is the message)."""


def _default_credentials() -> Any:
    import google.auth

    credentials, _ = google.auth.default(scopes=list(SCOPES))
    return credentials


class AccessTokens:
    """An async ``api_key`` provider for ``AsyncOpenAI``: the current access token."""

    def __init__(self, credentials: CredentialsFactory = _default_credentials) -> None:
        self._make_credentials = credentials
        self._credentials: Any = None
        self._token: str | None = None
        self._refresh_at: dt.datetime | None = None
        self._lock = threading.Lock()  # held by the worker thread that refreshes
        self.refreshes = 0
        """Tokens fetched so far (for logs and tests)."""

    async def __call__(self) -> str:
        token = self._current()
        if token is not None:
            return token
        return await asyncio.to_thread(self._refresh_once)

    def _current(self) -> str | None:
        if self._token is None or self._refresh_at is None:
            return None
        return self._token if utc_now() < self._refresh_at else None

    def _refresh_once(self) -> str:
        with self._lock:
            token = self._current()  # another thread refreshed while we waited
            if token is not None:
                return token
            from google.auth.exceptions import GoogleAuthError
            from google.auth.transport.requests import Request

            try:
                if self._credentials is None:
                    self._credentials = self._make_credentials()
                self._credentials.refresh(Request())
            except GoogleAuthError as exc:
                name = type(exc).__name__
                log.warning("access token for Vertex AI not refreshed: %s", name)
                raise TokenRefreshFailed(name) from None  # no google-auth traceback
            token = str(self._credentials.token)
            self._token, self._refresh_at = token, _refresh_time(self._credentials.expiry)
            self.refreshes += 1
            return token


def _refresh_time(expiry: dt.datetime | None) -> dt.datetime:
    """When to fetch the next token: ``REFRESH_MARGIN`` before ``expiry``, or a quarter
    of the token's lifetime before it when that is shorter."""
    now = utc_now()
    if expiry is None:  # credentials that do not say: ask again each minute
        return now + dt.timedelta(minutes=1)
    if expiry.tzinfo is None:  # google-auth keeps naive UTC datetimes
        expiry = expiry.replace(tzinfo=dt.UTC)
    margin = min(REFRESH_MARGIN, (expiry - now) / 4)
    return expiry - margin
