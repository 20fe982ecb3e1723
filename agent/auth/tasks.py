"""Who may deliver a background run's task (``POST /tasks/runs``): the queue, only.

The task route is not a caller route: a caller's credential never reaches it.

* With ``RUNS_QUEUE`` (Cloud Tasks), a task carries a Google identity token of
  ``RUNS_INVOKER``, minted for ``RUNS_TARGET_URL``: it is verified as callers' tokens
  are (``google_tokens.verify``; platform-verified per ``AUTH_PLATFORM_VERIFIED``), and
  its ``email`` must be the invoker's. No token: 401; any other identity: 403.
* Without it, the process is its own queue (``agent/runs/queue.py``): it made a random
  secret at start and sends it with every task; the route compares it in constant time.
  The local queue delivers only to the process that made the secret, so the secret
  never leaves it.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from typing import Protocol

from werkzeug.datastructures import Headers

from agent.auth import google_tokens
from agent.auth.modes import SERVERLESS_AUTHORIZATION, auth_unavailable, forbidden, unauthenticated
from agent.base.settings import Settings

log = logging.getLogger(__name__)

_BEARER = re.compile(r"Bearer\s+(\S+)", re.IGNORECASE)


class TaskAuth(Protocol):
    def check(self, headers: Headers) -> None:
        """Return if the request is the queue's; raise ApiError 401/403 otherwise."""
        ...


class LocalTaskAuth:
    """The local queue's secret, in ``header``."""

    def __init__(self, secret: str, header: str) -> None:
        self._secret = secret.encode()
        self._header = header

    def check(self, headers: Headers) -> None:
        presented = headers.get(self._header)
        if not presented:
            raise unauthenticated("Task", "Tasks come from the service's own queue.")
        if not hmac.compare_digest(presented.encode(), self._secret):
            log.warning("refused: a task request with a wrong queue secret")
            raise forbidden()


class InvokerTaskAuth:
    """A Google identity token of the queue's invoker identity."""

    def __init__(
        self,
        certs: google_tokens.CertCache,
        *,
        invoker: str,
        audiences: list[str],
        platform_verified: bool,
    ) -> None:
        self._certs = certs
        self._invoker = invoker.lower()
        self._audiences = audiences
        self._platform_verified = platform_verified

    def check(self, headers: Headers) -> None:
        presented = headers.get(SERVERLESS_AUTHORIZATION) or headers.get("Authorization")
        match = _BEARER.fullmatch((presented or "").strip())
        if match is None:
            raise unauthenticated('Bearer realm="tasks"', "Tasks carry the queue's identity.")
        try:
            claims = google_tokens.verify(
                match.group(1),
                self._certs,
                self._audiences,
                platform_verified=self._platform_verified,
            )
        except google_tokens.InvalidToken as invalid:
            raise unauthenticated(
                'Bearer realm="tasks", error="invalid_token"',
                f"The identity token is not accepted ({invalid}).",
            ) from None
        except google_tokens.CertsUnavailable:
            raise auth_unavailable() from None
        email = str(claims.get("email") or "").lower()
        if email != self._invoker or claims.get("email_verified") is False:
            log.warning("refused: a task request from another identity than RUNS_INVOKER")
            raise forbidden()


def build_task_auth(settings: Settings, local_secret: str | None, header: str) -> TaskAuth:
    """``InvokerTaskAuth`` with ``RUNS_QUEUE``; otherwise the local queue's secret (a
    fresh random one when there is no local queue: then no request can match)."""
    if settings.runs_queue is not None:
        assert settings.runs_invoker is not None  # Settings requires it with RUNS_QUEUE
        target = (settings.runs_target_url or "").rstrip("/")
        audiences = [target, target + "/"] if target else []
        return InvokerTaskAuth(
            google_tokens.CertCache(settings.auth_certs_url),
            invoker=settings.runs_invoker,
            audiences=audiences,
            platform_verified=settings.auth_platform_verified,
        )
    return LocalTaskAuth(local_secret or secrets.token_urlsafe(32), header)
