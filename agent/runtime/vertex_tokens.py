"""OAuth access tokens for Vertex AI, from Application Default Credentials.

Vertex AI's OpenAI-compatible endpoint takes a short-lived access token where OpenAI
takes a key, so ``MODEL_PROVIDER=vertex`` needs no secret at all: on Cloud Functions
the token is the runtime service account's, from the metadata server; on a
developer's machine it is theirs (``gcloud auth application-default login``).

* The OpenAI client asks for the token before every request (``api_key`` given as an
  async callable); this hands out the cached one while google-auth calls it fresh
  (``Credentials.token_state``: not within google-auth's own refresh threshold of
  expiry) and refreshes it otherwise, so a busy instance fetches one token per token
  lifetime, not per request, and never sends one google-auth would not.
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
import logging
import threading
from collections.abc import Callable
from typing import Any

from google.auth.credentials import TokenState

log = logging.getLogger(__name__)

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

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
        self._lock = threading.Lock()  # held by the worker thread that refreshes
        self.refreshes = 0
        """Tokens fetched so far (for logs and tests)."""

    async def __call__(self) -> str:
        token = self._current()
        if token is not None:
            return token
        return await asyncio.to_thread(self._refresh_once)

    def _current(self) -> str | None:
        credentials = self._credentials
        if credentials is None or credentials.token_state != TokenState.FRESH:
            return None
        return str(credentials.token)

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
            self.refreshes += 1
            return str(self._credentials.token)
