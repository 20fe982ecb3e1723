"""CORS for browser clients: only the origins in ``CORS_ALLOWED_ORIGINS``.

Empty (the default) adds nothing, so browsers refuse every cross-origin call. An
allowed origin gets its own name back (never ``*``) and no credentials flag: callers
authenticate with headers, not cookies. Preflight requests carry no credentials, so
``auth.py`` lets ``OPTIONS`` through; the preflight answers only which methods and
headers are allowed.
"""

from __future__ import annotations

from flask import Flask, Response, request

ALLOW_METHODS = "GET, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-API-Key"
EXPOSE_HEADERS = "X-Request-Id, Retry-After, Idempotent-Replayed, WWW-Authenticate"
MAX_AGE_SECONDS = "600"


def install(app: Flask, origins: list[str]) -> None:
    allowed = frozenset(origins)
    if not allowed:
        return

    @app.after_request
    def _cors(response: Response) -> Response:
        response.vary.add("Origin")  # the answer depends on it: caches must not mix
        origin = request.headers.get("Origin")
        if origin not in allowed:
            return response
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = MAX_AGE_SECONDS
        return response
