"""Offline verification of a Cloud Storage V4 signed URL, as the server would do it.

Neither emulator checks signatures, so the tests check them here: the canonical
request and the string-to-sign are rebuilt from the URL alone, following Google's V4
signing process (not the client library's code), and the hex signature is verified
against a public key with google-auth's RSAVerifier. Only URLs that sign the ``host``
header and an unsigned payload are supported, which is what the service issues.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import parse_qsl, quote, urlsplit

from google.auth import crypt

MAX_EXPIRES = 7 * 86400


class Rejected(AssertionError):
    """Google would refuse this URL."""


def verify(
    url: str, public_pem: str, *, method: str = "GET", now: dt.datetime | None = None
) -> str:
    """Raise Rejected unless ``url`` is validly signed by the key and unexpired at
    ``now``; return the signing account's email."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise Rejected("a query parameter is repeated")
    query = dict(pairs)
    signature = query.pop("X-Goog-Signature", None)
    for required in ("X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires"):
        if required not in query:
            raise Rejected(f"{required} is missing")
    if signature is None or query["X-Goog-Algorithm"] != "GOOG4-RSA-SHA256":
        raise Rejected("not a GOOG4-RSA-SHA256 signed URL")
    email, _, scope = query["X-Goog-Credential"].partition("/")
    date, _location, service, request_type = scope.split("/")
    timestamp = query["X-Goog-Date"]
    if (service, request_type) != ("storage", "goog4_request") or date != timestamp[:8]:
        raise Rejected(f"bad credential scope {scope!r}")
    if query.get("X-Goog-SignedHeaders") != "host":
        raise Rejected("only the host header may be signed")
    canonical_query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query.items()))
    canonical_request = "\n".join(
        [method, parts.path, canonical_query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    string_to_sign = "\n".join(
        [
            "GOOG4-RSA-SHA256",
            timestamp,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    try:
        signature_bytes = bytes.fromhex(signature)
    except ValueError:
        raise Rejected("the signature is not hex") from None
    if not crypt.RSAVerifier.from_string(public_pem).verify(string_to_sign, signature_bytes):
        raise Rejected("the signature does not match")
    expires = int(query["X-Goog-Expires"])
    if not 1 <= expires <= MAX_EXPIRES:
        raise Rejected(f"X-Goog-Expires={expires} is outside 1..{MAX_EXPIRES}")
    start = dt.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if (now or dt.datetime.now(dt.UTC)) > start + dt.timedelta(seconds=expires):
        raise Rejected("the URL has expired")
    return email


def _encode(text: str) -> str:
    # RFC 3986: everything but unreserved characters is percent-encoded.
    return quote(text, safe="-_.~")
