"""A loopback stand-in for the Google endpoints that keyless signing talks to.

One HTTP server plays three parts, by path:

* the metadata server of Cloud Functions (``GCE_METADATA_HOST``/``GCE_METADATA_IP``):
  the ping, the runtime service account's email, its access tokens, the project id;
* an OAuth token endpoint (``token_uri`` of user credentials): ``POST /token``;
* the IAM Credentials API: ``POST /v1/projects/-/serviceAccounts/{email}:signBlob``,
  which signs with the service account's throw-away private key, like Google's system
  key, and accepts only tokens it issued and that have not expired.

Controls: ``sign_status`` (answer signBlob with this error status, ``sign_failures``
times or always), ``hang_seconds``
(signBlob answers nothing for that long), ``token_seconds`` (lifetime of new tokens).
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from local.throwaway_key import ThrowawayKey
from tests.support.constants import LOOPBACK, PROJECT


@dataclass
class Standin:
    account: ThrowawayKey
    sign_status: int | None = None
    sign_failures: int = -1  # how many signBlob calls get sign_status; -1: all
    hang_seconds: float = 0.0
    token_seconds: int = 3600
    token_status: int | None = None  # the token endpoint answers this instead of a token
    token_requests: int = 0
    sign_requests: list[dict[str, str]] = field(default_factory=list)
    _tokens: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> Standin:
        standin = self

        class Handler(_Handler):
            owner = standin

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def issue_token(self) -> dict[str, Any]:
        with self._lock:
            self.token_requests += 1
            token = f"ya29.standin-{self.token_requests}"
            self._tokens[token] = time.time() + self.token_seconds
        return {"access_token": token, "expires_in": self.token_seconds, "token_type": "Bearer"}

    def token_is_valid(self, authorization: str) -> bool:
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            return self._tokens.get(token, 0) > time.time()

    def sign(self, payload: bytes) -> bytes:
        key = _private_key(self.account.private_pem)
        return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())


class _Handler(BaseHTTPRequestHandler):
    owner: Standin

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        metadata = "/computeMetadata/v1/"
        if path == "/":
            return self._send(200, "ok", "text/plain")
        if not path.startswith(metadata) or self.headers.get("Metadata-Flavor") != "Google":
            return self._send(404, "not found", "text/plain")
        leaf = path.removeprefix(metadata)
        if leaf.startswith("instance/service-accounts/") and leaf.endswith("/token"):
            if self.owner.token_status is not None:
                status = self.owner.token_status
                return self._send(status, _error(status, "PERMISSION_DENIED", "No token."))
            return self._send(200, self.owner.issue_token())
        if leaf.startswith("instance/service-accounts/"):
            email = self.owner.account.email
            info = {"email": email, "aliases": ["default"], "scopes": ["cloud-platform"]}
            return self._send(200, info)
        if leaf == "project/project-id":
            return self._send(200, PROJECT, "text/plain")
        if leaf == "universe/universe-domain":
            return self._send(200, "googleapis.com", "text/plain")
        return self._send(404, "not found", "text/plain")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = urlsplit(self.path).path
        if path == "/token":
            return self._send(200, self.owner.issue_token())
        prefix, suffix = "/v1/projects/-/serviceAccounts/", ":signBlob"
        if not (path.startswith(prefix) and path.endswith(suffix)):
            return self._send(404, _error(404, "NOT_FOUND", "No such method."))
        email = unquote(path[len(prefix) : -len(suffix)])
        authorization = self.headers.get("Authorization", "")
        with self.owner._lock:
            self.owner.sign_requests.append({"email": email, "authorization": authorization})
        if self.owner.hang_seconds:
            time.sleep(self.owner.hang_seconds)
            return self._send(503, _error(503, "UNAVAILABLE", "Hung."))
        if not self.owner.token_is_valid(authorization):
            return self._send(401, _error(401, "UNAUTHENTICATED", "Invalid credentials."))
        if self.owner.sign_status is not None and self.owner.sign_failures != 0:
            self.owner.sign_failures -= 1
            status = self.owner.sign_status
            message = f"Permission 'iam.serviceAccounts.signBlob' denied on {email}"
            return self._send(status, _error(status, "PERMISSION_DENIED", message))
        if email != self.owner.account.email:
            return self._send(404, _error(404, "NOT_FOUND", "Unknown service account."))
        signature = self.owner.sign(base64.b64decode(json.loads(raw)["payload"]))
        body = {"keyId": "standin-key", "signedBlob": base64.b64encode(signature).decode()}
        return self._send(200, body)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Metadata-Flavor", "Google")
        self.end_headers()
        self.wfile.write(data)


@functools.cache
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
