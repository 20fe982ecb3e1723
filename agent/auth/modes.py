"""Who is calling: one of three modes (``AUTH_MODE``), each turning a request into a
principal, the name that owns the conversations it creates.

* ``iam``: a Google identity token, verified here (``google_tokens.py``) even though
  Cloud Functions IAM checked it already. It is read from the header Cloud Run checks,
  with Cloud Run's precedence: ``X-Serverless-Authorization`` first, then
  ``Authorization``. The principal is ``sub:<sub>``, the account's stable id, which every
  Google identity token carries (``email`` is present only when the token was minted
  with it); ``AUTH_ALLOWED_PRINCIPALS`` may name either the email or ``sub:<sub>``.
  Accepted audiences are configuration (``AUTH_AUDIENCE``), never the request, except
  for loopback hosts off the platform (local development).
* ``api_key``: a key in ``X-API-Key``. Keys come from ``AUTH_API_KEYS`` (filled from
  Secret Manager), are kept only as SHA-256 digests, and are compared in constant
  time; each maps to its principal name.
* ``none``: everyone is the principal ``local``. Settings refuse it on the platform.
  Off the platform it answers only requests addressed to a loopback ``Host``: a page on
  another site that rebinds its DNS name to 127.0.0.1 reaches the port but sends its own
  name as ``Host``, and must not drive tools or spend the developer's model key (400
  ``invalid_host``).

Failures are 401 ``unauthenticated`` with a ``WWW-Authenticate`` challenge; a valid
identity outside ``AUTH_ALLOWED_PRINCIPALS`` is 403 ``forbidden``. Tokens and keys are
never logged; the reason for a refusal is, as a fixed phrase.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Protocol

from werkzeug.datastructures import Headers

from agent.auth import google_tokens
from agent.base import errors
from agent.base.settings import LOOPBACK_HOSTS, Settings, SettingsError, csv

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
LOCAL_PRINCIPAL = "local"
_NAME = re.compile(r"[A-Za-z0-9_.@+-]{1,128}")
_KEY = re.compile(r"[\x21-\x7e]{16,512}")  # printable ASCII, no spaces
_BEARER = re.compile(r"Bearer +([A-Za-z0-9_.+/=-]+)", re.IGNORECASE)
SERVERLESS_AUTHORIZATION = "X-Serverless-Authorization"
"""Cloud Run checks this header before ``Authorization`` and leaves the latter to the app."""


class Authenticator(Protocol):
    def authenticate(self, headers: Headers, host: str) -> str:
        """The caller's principal; raises ApiError (401, 403, 503)."""
        ...


def unauthenticated(challenge: str, message: str) -> errors.ApiError:
    return errors.ApiError(401, "unauthenticated", message, {"WWW-Authenticate": challenge})


def forbidden() -> errors.ApiError:
    return errors.ApiError(403, "forbidden", "This identity may not use this service.")


def auth_unavailable() -> errors.ApiError:
    return errors.ApiError(
        503,
        "auth_unavailable",
        "Identity verification is unavailable; retry shortly.",
        {"Retry-After": "5"},
    )


class NoAuth:
    """``AUTH_MODE=none``: everyone is ``local``; with ``loopback_only`` (everywhere but
    a forced deploy on the platform) only requests to a loopback ``Host``."""

    def __init__(self, *, loopback_only: bool = True) -> None:
        self._loopback_only = loopback_only

    def authenticate(self, headers: Headers, host: str) -> str:
        if self._loopback_only and _hostname(host) not in LOOPBACK_HOSTS:
            log.warning("refused: AUTH_MODE=none and a Host that is not loopback")
            raise errors.ApiError(
                400,
                "invalid_host",
                "Without authentication (AUTH_MODE=none) this service answers only requests"
                " to localhost, 127.0.0.1 or [::1].",
            )
        return LOCAL_PRINCIPAL


class ApiKeyAuth:
    """``AUTH_MODE=api_key``: a key in ``X-API-Key`` names the principal."""

    _CHALLENGE = f'ApiKey realm="agent", header="{API_KEY_HEADER}"'

    def __init__(self, keys: Mapping[str, str]) -> None:
        """``keys``: principal name -> key. Only digests are kept."""
        self._digests = [(_digest(key), name) for name, key in keys.items()]

    def authenticate(self, headers: Headers, host: str) -> str:
        presented = headers.get(API_KEY_HEADER)
        if not presented:
            raise unauthenticated(
                self._CHALLENGE, f"Send an API key in the {API_KEY_HEADER} header."
            )
        digest = _digest(presented)
        found = None
        for stored, name in self._digests:  # no early exit: every key costs the same
            if hmac.compare_digest(stored, digest):
                found = name
        if found is None:
            log.warning("refused: unknown API key")
            raise unauthenticated(self._CHALLENGE, "The API key is not valid.")
        return found


class IamAuth:
    """``AUTH_MODE=iam``: a Google identity token names the principal."""

    def __init__(
        self,
        certs: google_tokens.CertCache,
        *,
        audiences: list[str],
        service_name: str | None,
        allowed: frozenset[str],
        platform_verified: bool = False,
    ) -> None:
        self._certs = certs
        self._audiences = audiences
        self._service_name = service_name
        self._allowed = allowed
        self._platform_verified = platform_verified

    def authenticate(self, headers: Headers, host: str) -> str:
        # Cloud Run's order: the header it checked is the one that names the caller.
        presented = headers.get(SERVERLESS_AUTHORIZATION) or headers.get("Authorization")
        match = _BEARER.fullmatch((presented or "").strip())
        if match is None:
            raise unauthenticated(
                'Bearer realm="agent"',
                "Send a Google identity token as 'Authorization: Bearer <token>'.",
            )
        try:
            claims = google_tokens.verify(
                match.group(1),
                self._certs,
                self.audiences_for(host),
                platform_verified=self._platform_verified,
            )
        except google_tokens.InvalidToken as invalid:
            reason = str(invalid)
            log.warning("refused: identity token %s", reason, extra={"fields": {"reason": reason}})
            raise unauthenticated(
                f'Bearer realm="agent", error="invalid_token", error_description="{reason}"',
                f"The identity token is not accepted ({reason}).",
            ) from None
        except google_tokens.CertsUnavailable:
            log.error("cannot fetch Google's token signing keys")
            raise auth_unavailable() from None
        principal = _principal_of(claims)
        if self._allowed and not self._allowed & _names_of(claims):
            log.warning(
                "refused: principal not allowed", extra={"fields": {"principal": principal}}
            )
            raise forbidden()
        return principal

    def audiences_for(self, host: str) -> list[str]:
        """The audiences a signed token may carry: AUTH_AUDIENCE, or off the platform
        the request's own URL when it was sent to a loopback host."""
        if self._audiences:
            return self._audiences
        if not host:
            raise errors.ApiError(400, "invalid_host", "The request has no Host header.")
        # The caller writes Host: deriving the audience from it would accept a token
        # minted for any other service. Only a developer's own machine may do that, and
        # on the platform AUTH_AUDIENCE is required (Settings refuses to start without).
        if _hostname(host) not in LOOPBACK_HOSTS:
            return []
        origin = f"https://{host}"
        derived = [origin, origin + "/"]
        if self._service_name:
            derived.append(f"{origin}/{self._service_name}")
        return derived


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator ``AUTH_MODE`` names; raises SettingsError when it cannot work."""
    if settings.auth_mode == "none":
        if settings.k_service:
            log.warning(
                "AUTHENTICATION IS OFF on %s: AUTH_MODE=none forced by AUTH_FORCE_NONE_ON_CLOUD",
                settings.k_service,
            )
        else:
            log.info("authentication off (AUTH_MODE=none): local development only")
        # A forced deploy is reached under its own public name: the operator chose that.
        return NoAuth(loopback_only=not settings.k_service)
    if settings.auth_mode == "api_key":
        keys = parse_api_keys(settings.auth_api_keys or "")
        log.info("authentication by API key: %d principals", len(keys))
        return ApiKeyAuth(keys)
    certs = google_tokens.CertCache(settings.auth_certs_url)
    return IamAuth(
        certs,
        audiences=csv(settings.auth_audience),
        service_name=settings.k_service,
        allowed=frozenset(csv(settings.auth_allowed_principals)),
        platform_verified=settings.auth_platform_verified,
    )


def parse_api_keys(raw: str) -> dict[str, str]:
    """``name:key,name2:key2`` or ``{"name": "key"}`` -> {name: key}; SettingsError
    naming AUTH_API_KEYS (never quoting a key) when malformed."""
    pairs: list[tuple[object, object]] = []
    if raw.lstrip().startswith("{"):
        try:
            loaded = json.loads(raw)
        except ValueError:
            raise SettingsError("AUTH_API_KEYS is not valid JSON") from None
        pairs = list(loaded.items()) if isinstance(loaded, dict) else []
    else:
        for item in csv(raw):
            item_name, _, item_key = item.partition(":")
            pairs.append((item_name, item_key))
    keys: dict[str, str] = {}
    # Entries are named by position: a malformed one may be a key pasted alone.
    for number, (name, key) in enumerate(pairs, start=1):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SettingsError(f"AUTH_API_KEYS: entry {number} has no valid principal name")
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise SettingsError(
                f"AUTH_API_KEYS: the key of entry {number} must be 16-512 printable characters"
            )
        if name in keys or key in keys.values():
            raise SettingsError(f"AUTH_API_KEYS: entry {number} repeats a name or a key")
        keys[name] = key
    if not keys:
        raise SettingsError("AUTH_API_KEYS holds no keys")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _principal_of(claims: Mapping[str, object]) -> str:
    """``sub:<sub>``: the same for one account whether or not its token carries an email
    (tokens minted without ``includeEmail`` have none), and never reassigned."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _NAME.fullmatch(sub):
        raise unauthenticated(
            'Bearer realm="agent", error="invalid_token", error_description="no subject"',
            "The identity token is not accepted (no subject).",
        )
    return f"sub:{sub}"


def _names_of(claims: Mapping[str, object]) -> frozenset[str]:
    """What an allow-list entry may name: ``sub:<sub>`` and the verified email, if any."""
    names = {_principal_of(claims)}
    email = claims.get("email")
    if isinstance(email, str) and email and claims.get("email_verified", True) is not False:
        names.add(email)
    return frozenset(names)


def _hostname(host: str) -> str:
    """``localhost:8080`` -> ``localhost``; ``[::1]:8080`` -> ``::1``; malformed -> ""."""
    try:
        return urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""
