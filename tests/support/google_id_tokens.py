"""A local stand-in of Google's identity-token key endpoint, and a token minter.

Throw-away RSA keys sign tokens exactly as Google does (RS256, ``kid`` header); the
stand-in serves their public halves as X.509 certificates in the format of
https://www.googleapis.com/oauth2/v1/certs (``{kid: PEM}``, ``Cache-Control:
max-age``). Tests point ``AUTH_CERTS_URL`` at it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from tests.support.constants import LOOPBACK

ISSUER = "https://accounts.google.com"


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(pem, key_id=kid)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(
        self,
        audience: str,
        *,
        email: str | None = "alice@example.com",
        lifetime: float = 3600,
        issued_ago: float = 0,
        issuer: str = ISSUER,
        kid: str | None = None,
        sub: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed token. ``sub`` defaults to a stable id derived from ``email``, so one
        account keeps one ``sub`` whether or not its token carries the email."""
        now = int(time.time() - issued_ago)
        payload: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": sub or subject_of(email or "anonymous"),
            "iat": now,
            "exp": int(now + lifetime),
        }
        if email is not None:
            payload |= {"email": email, "email_verified": True}
        payload |= claims
        return str(jwt.encode(self._signer, payload, key_id=kid or self.kid).decode())


def subject_of(email: str) -> str:
    """The stand-in's ``sub`` for an account: digits, like Google's, stable per email."""
    return str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))


def strip_signature(token: str) -> str:
    """``token`` as Cloud Run forwards it after verifying it."""
    return token.rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"


class CertsServer:
    """Serves ``{kid: PEM}`` for the keys given; counts fetches; can fail."""

    def __init__(self, *keys: SigningKey, max_age: int = 3600) -> None:
        self.keys = list(keys)
        self.max_age = max_age
        self.fetches = 0
        self.failing = False
        self.delay: threading.Event | None = None  # set: each answer waits for it
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stand_in.fetches += 1
                if stand_in.delay is not None:
                    stand_in.delay.wait(10)
                if stand_in.failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({k.kid: k.cert_pem for k in stand_in.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={stand_in.max_age}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}/oauth2/v1/certs"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
