"""A loopback stand-in for Vertex AI's OpenAI-compatible Chat Completions endpoint.

It serves ``POST /v1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions``
as Vertex AI does: only with a current access token of the metadata stand-in
(``google_metadata_and_iam.Standin``), else 401 ``UNAUTHENTICATED``; with
``quota_exhausted`` set, 429 ``RESOURCE_EXHAUSTED`` in Google's error shape. Accepted
requests are answered by the demo model behind it (relayed whole, not streamed).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.constants import LOOPBACK
from tests.support.google_metadata_and_iam import Standin


@dataclass
class VertexStandIn:
    tokens: Standin
    model_url: str
    """The demo model's base URL (``.../v1``)."""
    project: str
    location: str = "global"
    quota_exhausted: bool = False
    accepted: int = 0
    rejected: list[int] = field(default_factory=list)
    """Statuses of the requests refused (401 bad token, 404 wrong path, 429 quota)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def path(self) -> str:
        return (
            f"/v1/projects/{self.project}/locations/{self.location}"
            "/endpoints/openapi/chat/completions"
        )

    def start(self) -> VertexStandIn:
        owner = self

        class Handler(_Handler):
            stand_in = owner

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse(self, status: int) -> None:
        with self._lock:
            self.rejected.append(status)


class _Handler(BaseHTTPRequestHandler):
    stand_in: VertexStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        owner = self.stand_in
        if self.path.split("?")[0] != owner.path:
            owner.refuse(404)
            return self._send(404, _error(404, "NOT_FOUND", "No such endpoint."))
        if not owner.tokens.token_is_valid(self.headers.get("Authorization", "")):
            owner.refuse(401)
            message = "Request had invalid authentication credentials."
            return self._send(401, _error(401, "UNAUTHENTICATED", message))
        if owner.quota_exhausted:
            owner.refuse(429)
            message = "Quota exceeded for aiplatform.googleapis.com/generate_content_requests."
            return self._send(429, _error(429, "RESOURCE_EXHAUSTED", message))
        with owner._lock:
            owner.accepted += 1
        request = urllib.request.Request(
            owner.model_url + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                status, data, kind = reply.status, reply.read(), reply.headers["Content-Type"]
        except urllib.error.HTTPError as failed:
            status, data, kind = failed.code, failed.read(), "application/json"
        self._send_raw(status, data, kind)

    def _send(self, status: int, body: Any) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
