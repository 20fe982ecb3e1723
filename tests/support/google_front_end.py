"""A stand-in of Google's front end for a private (``--no-allow-unauthenticated``) gen2
function, which is a Cloud Run service: a loopback HTTP proxy in front of the real server.

What it does to each request, as Cloud Run does:

* It takes the identity token from ``X-Serverless-Authorization`` if that header is
  present, otherwise from ``Authorization`` (Cloud Run checks the former first and then
  leaves ``Authorization`` to the application).
* It verifies the token itself: RS256 signature against the stand-in certificate endpoint
  (``tests/support/google_id_tokens.py``), issuer, expiry, and an audience among those the
  platform accepts (the function's URLs and, for a person's token from
  ``gcloud auth print-identity-token``, gcloud's own client id). A refused request never
  reaches the server (401).
* It forwards the request with that header's token rewritten: its signature replaced by
  the literal ``SIGNATURE_REMOVED_BY_GOOGLE``. The other header passes untouched.

IAM's invoker check is modelled by an optional set of allowed emails/subs.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.auth import jwt

from tests.support.constants import LOOPBACK

GCLOUD_CLIENT_ID = "32555940559.apps.googleusercontent.com"
"""The audience of `gcloud auth print-identity-token` run without --audiences (gcloud's
OAuth client id, googlecloudsdk/core/config.py CLOUDSDK_CLIENT_ID)."""
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
_BEARER = re.compile(r"Bearer +(\S+)", re.IGNORECASE)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


class GoogleFrontEnd:
    def __init__(
        self,
        upstream_port: int,
        certs_url: str,
        audiences: list[str],
        invokers: set[str] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.certs_url = certs_url
        self.audiences = [*audiences, GCLOUD_CLIENT_ID]
        self.invokers = invokers
        self.forwarded: list[dict[str, str]] = []  # headers as the server received them
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                front.handle(self)

            do_POST = do_DELETE = do_PUT = do_GET

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _certs(self) -> dict[str, str]:
        with urllib.request.urlopen(self.certs_url, timeout=5) as response:
            certs: dict[str, str] = json.loads(response.read())
        return certs

    def check(self, token: str) -> dict[str, Any] | None:
        """The claims if the platform would accept this token, else None."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, certs=self._certs(), audience=self.audiences, clock_skew_in_seconds=30
            )  # type: ignore[no-untyped-call]
        except Exception:  # google-auth raises several kinds; each is a refusal
            return None
        if claims.get("iss") not in ("https://accounts.google.com", "accounts.google.com"):
            return None
        if self.invokers is not None:
            names = {claims.get("email"), f"sub:{claims.get('sub')}"}
            if not names & self.invokers:
                return None
        return claims

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        checked = next(
            (h for h in ("X-Serverless-Authorization", "Authorization") if request.headers[h]),
            None,
        )
        match = _BEARER.fullmatch((request.headers[checked] or "").strip()) if checked else None
        if match is None or self.check(match.group(1)) is None:
            self._reply(request, 401, {"Content-Type": "text/html"}, b"<h1>401</h1>")
            return
        stripped = match.group(1).rsplit(".", 1)[0] + "." + SIGNATURE_REMOVED
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        assert checked is not None
        headers = {k: v for k, v in headers.items() if k.lower() != checked.lower()}
        headers[checked] = f"Bearer {stripped}"
        self.forwarded.append(dict(headers))
        upstream = http.client.HTTPConnection(LOOPBACK, self.upstream_port, timeout=60)
        try:
            upstream.request(request.command, request.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            self._reply(request, response.status, out, payload)
        finally:
            upstream.close()

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        request.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
