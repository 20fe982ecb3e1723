"""Verifying Google-signed identity tokens ourselves: signature, issuer, audience, expiry.

Cloud Functions IAM checks the token before the request arrives, but a deploy made
public by mistake would skip that check; verifying here too means such a mistake
does not become open access. Google's signing keys rotate, so they are fetched from
``certs_url`` and cached for as long as its ``Cache-Control: max-age`` says. A token
naming an unknown key id triggers one early refetch, at most every
``_MIN_REFETCH_SECONDS``, so forged key ids cannot make us hammer Google. A failed fetch
backs off too (1 s doubling to 30 s), and fetches run outside the cache's lock, one at a
time: concurrent callers serve the keys they have, or wait for that one fetch.

Behind Google's front end (``--no-allow-unauthenticated``) the token arrives with its
signature replaced by ``SIGNATURE_REMOVED_BY_GOOGLE``: the front end has verified it.
``verify(..., platform_verified=True)`` then checks what is left to check (issuer,
expiry); with ``platform_verified=False`` such a token is refused.
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
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
"""What Cloud Run puts in place of the signature of a token it has verified."""
_MIN_REFETCH_SECONDS = 30.0
_FIRST_FAILURE_BACKOFF = 1.0
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
        first_failure_backoff: float = _FIRST_FAILURE_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._min_refetch = min_refetch_seconds
        self._first_backoff = first_failure_backoff
        self._clock = clock
        self._lock = threading.Lock()
        self._fetch_done = threading.Condition(self._lock)
        self._fetching = False
        self._certs: dict[str, str] = {}
        self._fresh_until = 0.0
        self._fetched_at = -min_refetch_seconds
        self._failures = 0
        self._next_attempt = 0.0  # after a failure: no fetch before this
        self.fetches = 0

    def certs_for(self, key_id: str) -> Mapping[str, str]:
        with self._lock:
            now = self._clock()
            stale = now >= self._fresh_until
            unknown = key_id not in self._certs and now - self._fetched_at >= self._min_refetch
            fetch = (stale or unknown) and now >= self._next_attempt and not self._fetching
            if fetch:
                self._fetching = True
                self._fetched_at = now
                self.fetches += 1
            else:
                if self._fetching and not self._certs:
                    # Nothing to serve meanwhile: wait for the one fetch in flight.
                    self._fetch_done.wait_for(lambda: not self._fetching, self._timeout + 1.0)
                if not self._certs:
                    raise CertsUnavailable("no keys; the last fetch failed")
                return dict(self._certs)
        # The network call holds no lock: callers with keys in hand are never queued
        # behind it, and only this one call is made.
        try:
            certs, max_age = self._download()
        except (OSError, ValueError) as exc:
            with self._lock:
                self._fetching = False
                self._failures += 1
                backoff = self._first_backoff * 2 ** min(self._failures - 1, 10)
                self._next_attempt = self._clock() + min(backoff, self._min_refetch)
                self._fetch_done.notify_all()
                # Keys rotate slowly: serving from stale ones beats refusing everyone.
                if not self._certs:
                    raise CertsUnavailable(type(exc).__name__) from exc
                return dict(self._certs)
        with self._lock:
            self._certs = certs
            self._fresh_until = now + max(self._min_refetch, min(max_age, 86400.0))
            self._failures = 0
            self._next_attempt = 0.0
            self._fetching = False
            self._fetch_done.notify_all()
            return dict(self._certs)

    def _download(self) -> tuple[dict[str, str], float]:
        with urllib.request.urlopen(self._url, timeout=self._timeout) as response:
            body = json.loads(response.read())
            cache_control = response.headers.get("Cache-Control", "")
        if not isinstance(body, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in body.items()
        ):
            raise ValueError("certs endpoint did not return {kid: PEM}")
        match = _MAX_AGE.search(cache_control)
        return body, float(match.group(1)) if match else _DEFAULT_MAX_AGE


def verify(
    token: str,
    certs: CertCache,
    audiences: Sequence[str],
    *,
    platform_verified: bool = False,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The token's claims if Google signed it (RS256) for one of ``audiences`` and it
    is current; raises InvalidToken otherwise, CertsUnavailable if keys cannot load.

    A token whose signature the front end replaced by ``SIGNATURE_REMOVED`` is accepted
    only with ``platform_verified`` and then checked for issuer and expiry alone: its
    audience was the platform's to check, and the platform accepts more than the
    function's URLs (gcloud's own client id, for a person's token)."""
    header = _header(token)
    if token.rsplit(".", 1)[1] == SIGNATURE_REMOVED:
        if not platform_verified:
            raise InvalidToken("signature removed")
        return _stripped_claims(token, clock())
    if header.get("alg") != "RS256":
        raise InvalidToken("algorithm is not RS256")
    key_id = header.get("kid")
    if not isinstance(key_id, str):
        raise InvalidToken("no key id")
    known = certs.certs_for(key_id)
    if key_id not in known:
        raise InvalidToken("unknown key id")
    if not audiences:
        raise InvalidToken("no audience configured")
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


def _stripped_claims(token: str, now: float) -> dict[str, Any]:
    """Issuer and time checks of a token the front end verified (same skew as ours)."""
    encoded = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidToken("not a JWT") from None
    if not isinstance(claims, dict):
        raise InvalidToken("not a JWT")
    if claims.get("iss") not in ISSUERS:
        raise InvalidToken("issuer is not Google")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise InvalidToken("missing iat or exp")
    if now > expires + CLOCK_SKEW_SECONDS:
        raise InvalidToken("expired")
    if now < issued - CLOCK_SKEW_SECONDS:
        raise InvalidToken("not yet valid")
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
