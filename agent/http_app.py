"""The HTTP API: routes, request limits and the error shape, as a Flask app.

``main.agent_http`` dispatches every request of the Cloud Function into this app, so
``/chat``, ``/sessions/<id>`` and ``/healthz`` are real routes with method handling,
and the same app runs under the functions-framework local server.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import errors
from .service import Service
from .validation import check_session_id, parse_chat

log = logging.getLogger("agent.http")

_HTTP_CODES = {
    404: ("not_found", "No such route."),
    405: ("method_not_allowed", "Method not allowed on this route."),
    413: ("request_too_large", "The request body is too large."),
}


def create_app(service: Service) -> Flask:
    app = Flask(__name__)
    settings = service.settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()
        g.request_id = uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "fields": {
                    "request_id": g.get("request_id"),
                    "session_id": g.get("session_id"),
                    "status": response.status_code,
                    "latency_ms": round(
                        (time.monotonic() - g.get("started", time.monotonic())) * 1000, 1
                    ),
                    "usage": g.get("usage"),
                }
            },
        )
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.post("/chat")
    def chat() -> Response:
        if request.mimetype != "application/json":
            raise errors.ApiError(
                415, "unsupported_media_type", "Send the body as application/json."
            )
        body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
        chat_request = parse_chat(body, settings.max_message_chars)
        session_id = chat_request.session_id or service.new_session_id()
        g.session_id = session_id
        outcome = service.turns.run(session_id, chat_request.message, g.started)
        g.usage = outcome.usage
        answer: dict[str, object] = {
            "session_id": outcome.session_id,
            "reply": outcome.reply,
            "new_session": outcome.new_session,
            "usage": outcome.usage,
            "expires_at": _rfc3339(outcome.expire_at),
        }
        if outcome.result is not None:
            answer["result"] = outcome.result.as_json()
        if outcome.warnings:
            answer["warnings"] = list(outcome.warnings)
        return jsonify(answer)

    @app.get("/sessions/<session_id>")
    def get_session(session_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        history = service.load(session_id)
        if history is None:
            raise errors.session_not_found()
        return jsonify(
            session_id=session_id,
            items=history.items,
            turns=history.turns,
            expires_at=_rfc3339(history.expire_at),
        )

    @app.delete("/sessions/<session_id>")
    def delete_session(session_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        if not service.delete(session_id):
            raise errors.session_not_found()
        return Response(status=204)

    @app.get("/sessions/<session_id>/results/<turn_id>")
    def get_result(session_id: str, turn_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        return jsonify(service.resign_result(session_id, turn_id).as_json())

    @app.errorhandler(errors.ApiError)
    def _api_error(error: errors.ApiError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code, message = _HTTP_CODES.get(status, ("bad_request", "Bad request."))
        headers = {}
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return _error_response(errors.ApiError(status, code, message, headers))

    @app.errorhandler(Exception)
    def _bug(error: Exception) -> Response:
        # The traceback goes to the log under the request id; the caller gets the id only.
        log.error(
            "unhandled error",
            exc_info=error,
            extra={"fields": {"request_id": g.get("request_id")}},
        )
        return _error_response(errors.internal_error(), request_id=g.get("request_id"))

    return app


def _error_response(error: errors.ApiError, request_id: str | None = None) -> Response:
    response = jsonify(error.body(request_id))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
