"""The chat page at ``GET /``: one self-contained page for trying the agent in a browser.

The page is ``static/playground.html`` with ``playground.css`` and ``playground.js``
inlined at startup, so it is one response with no further requests: no CDN, no build
step, about 15 KB. It talks to the API of the same origin (``POST /chat`` streamed as
Server-Sent Events over ``fetch``, ``GET /sessions/<id>`` to show the history after a
reload) with the credential of ``AUTH_MODE``: none, or an API key the user types, kept
in the tab's ``sessionStorage`` and sent as ``X-API-Key``, never in a URL. With
``iam`` the page explains how to call the API with an identity token instead.

Served only with ``PLAYGROUND_ENABLED`` (on by default locally, off where
``K_SERVICE`` is set), without authentication (it holds no data), and with a strict
Content-Security-Policy: the inline script and style run only because their SHA-256
hashes are in the policy, ``connect-src 'self'`` confines the page's requests to this
origin, and nothing else may load. Model output is only ever inserted as text nodes.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources

from flask import Flask, Response

from agent.base.settings import Settings

_STATIC = resources.files("agent.api") / "static"


@dataclass(frozen=True)
class Page:
    html: bytes
    csp: str


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def build_page(auth_mode: str) -> Page:
    """The page for ``auth_mode``, with its Content-Security-Policy."""
    template = (_STATIC / "playground.html").read_text(encoding="utf-8")
    css = (_STATIC / "playground.css").read_text(encoding="utf-8")
    js = (_STATIC / "playground.js").read_text(encoding="utf-8")
    html = (
        template.replace("{{AUTH_MODE}}", auth_mode)  # one of three fixed words
        .replace("{{CSS}}", css)
        .replace("{{JS}}", js)
    )
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(js)}",
            f"style-src {_sha256(css)}",
            "connect-src 'self'",
            "img-src data:",  # the empty favicon, so the browser asks for none
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html.encode(), csp)


def install(app: Flask, settings: Settings) -> None:
    """Serve the page at ``GET /`` when ``PLAYGROUND_ENABLED``."""
    if not settings.playground_enabled:
        return
    page = build_page(settings.auth_mode)

    @app.get("/")
    def playground() -> Response:
        response = Response(page.html, mimetype="text/html")
        response.headers["Content-Security-Policy"] = page.csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response
