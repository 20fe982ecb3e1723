"""Verifying Google-signed identity tokens ourselves: signature, issuer, audience, expiry.

Cloud Functions IAM checks the token before the request arrives, but a deploy made
public by mistake would skip that check; verifying here too means such a mistake
does not become open access. Google's signing keys rotate, so they are fetched from
``certs_url`` and cached for as long as its ``Cache-Control: max-age`` says. A token
naming an unknown key id triggers one early refetch, at most every
``_MIN_REFETCH_SECONDS``, so forged key ids cannot make us hammer Google.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.auth import exceptions as gauth_exceptions
from google.auth import jwt

ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
CLOCK_SKEW_SECONDS = 30
_MIN_REFETCH_SECONDS = 30.0
_DEFAULT_MAX_AGE = 3600.0
_MAX_AGE = re.compile(r"max-age=(\d+)")


class InvalidToken(Exception):
    """The token is not acceptable. The message names why (never the token)."""


class CertsUnavailable(Exception):
    """Google's keys could not be fetched and none are cached."""


class CertCache:
    """Google's current signing certificates, ``{key id: PEM}``; thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        min_refetch_seconds: float = _MIN_REFETCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._min_refetch = min_refetch_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._fresh_until = 0.0
        self._fetched_at = -min_refetch_seconds
        self.fetches = 0

    def certs_for(self, key_id: str) -> Mapping[str, str]:
        with self._lock:
            now = self._clock()
            stale = now >= self._fresh_until
            unknown = key_id not in self._certs and now - self._fetched_at >= self._min_refetch
            if stale or unknown:
                try:
                    self._fetch(now)
                except (OSError, ValueError) as exc:
                    # Keys rotate slowly: serving from stale ones beats refusing everyone.
                    if not self._certs:
                        raise CertsUnavailable(type(exc).__name__) from exc
            return dict(self._certs)

    def _fetch(self, now: float) -> None:
        self._fetched_at = now
        self.fetches += 1
        with urllib.request.urlopen(self._url, timeout=self._timeout) as response:
            body = json.loads(response.read())
            cache_control = response.headers.get("Cache-Control", "")
        if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in body.items()
        ):
            raise ValueError("certs endpoint did not return {kid: PEM}")
        match = _MAX_AGE.search(cache_control)
        max_age = float(match.group(1)) if match else _DEFAULT_MAX_AGE
        self._certs = body
        self._fresh_until = now + max(self._min_refetch, min(max_age, 86400.0))


def verify(token: str, certs: CertCache, audiences: Sequence[str]) -> dict[str, Any]:
    """The token's claims if Google signed it (RS256) for one of ``audiences`` and it
    is current; raises InvalidToken otherwise, CertsUnavailable if keys cannot load."""
    header = _header(token)
    if header.get("alg") != "RS256":
        raise InvalidToken("algorithm is not RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise InvalidToken("no key id")
    known = certs.certs_for(key_id)
    if key_id not in known:
        raise InvalidToken("unknown key id")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            certs={key_id: known[key_id]},
            audience=list(audiences),
            clock_skew_in_seconds=CLOCK_SKEW_SECONDS,
        )  # type: ignore[no-untyped-call]
    except (gauth_exceptions.GoogleAuthError, ValueError) as exc:
        raise InvalidToken(_reason(str(exc))) from None
    if claims.get("iss") not in ISSUERS:
        raise InvalidToken("issuer is not Google")
    return claims


def _header(token: str) -> dict[str, Any]:
    if token.count(".") != 2:
        raise InvalidToken("not a JWT")
    encoded = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("not a JWT") from None
    if not isinstance(header, dict):
        raise InvalidToken("not a JWT")
    return header


def _reason(message: str) -> str:
    """A short, fixed reason for the log; google-auth's text can quote claims."""
    lowered = message.lower()
    for needle, reason in (
        ("expired", "expired"),
        ("audience", "wrong audience"),
        ("signature", "bad signature"),
        ("too early", "not yet valid"),
        ("required claim", "missing iat or exp"),
    ):
        if needle in lowered:
            return reason
    return "malformed"
