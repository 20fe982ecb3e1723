"""The HTTP API: routes, request limits and the error shape, as a Flask app.

``main.agent_http`` dispatches every request of the Cloud Function into this app, so
``/chat``, ``/sessions/<id>`` and ``/healthz`` are real routes with method handling,
and the same app runs under the functions-framework local server.

``GET /`` is the chat page (``playground.py``) when ``PLAYGROUND_ENABLED``.

Every route but ``/healthz`` and ``/`` (and CORS preflights) first authenticates the caller
(``agent/auth``); the principal then scopes every session operation
(``agent/turn/ownership.py``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from agent.api import cors, playground, runs, sse
from agent.api.requests import (
    REPLAYED_HEADER,
    check_session_id,
    parse_chat,
    parse_decisions,
    parse_key,
)
from agent.api.responses import chat_response, rfc3339
from agent.base import errors, tracing
from agent.base.logs import bind_request, trace_fields, unbind
from agent.base.settings import csv
from agent.runtime.streaming import RunEvent
from agent.service import Service
from agent.turn.approvals import Resume
from agent.turn.idempotency import run_once, stream_once
from agent.turn.outcome import TurnOutcome, Usage

log = logging.getLogger(__name__)

Events = Generator[RunEvent | TurnOutcome | None, None, None]

BODY_UNREAD = "agent.body_unread"
"""WSGI environ key set on a request answered before its body was read (a 401, 403, 404,
405, 413 or 415 to a request that sent one): main.py then keeps functions-framework from
reading that body, and the connection is closed after the reply."""

PUBLIC_ENDPOINTS = frozenset({"healthz", "playground"})
"""Routes that need no credential: the liveness check, and the chat page (which holds
no data; its calls to the API carry the credential)."""

_HTTP_CODES = {
    404: ("not_found", "No such route."),
    405: ("method_not_allowed", "Method not allowed on this route."),
    413: ("request_too_large", "The request body is too large."),
}


def create_app(service: Service) -> Flask:
    """The Flask app serving the API over ``service`` (see ``build_service``)."""
    app = Flask(__name__)
    app.extensions["agent.service"] = service  # for tests and tools holding only the app
    settings = service.settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()
        g.request_id = uuid.uuid4().hex

    @app.before_request
    def _identify() -> None:
        rule = request.url_rule.rule if request.url_rule is not None else None
        g.span = tracing.start_request(
            f"{request.method} {rule or 'unmatched'}",
            request.headers,
            **{"http.request.method": request.method, "url.path": request.path},
        )
        g.span.set("http.route", rule)
        g.span.set("agent.request_id", g.request_id)
        g.span.attach()
        # With export on, the request span's trace (the caller's, or a new one) names
        # the log lines' trace too, so Cloud Logging shows them beside the spans.
        trace = g.span.log_fields(service.project) or trace_fields(request.headers, service.project)
        g.log_token = bind_request({"request_id": g.request_id} | trace)
        if request.routing_exception is not None or request.method == "OPTIONS":
            return  # unknown routes and methods answer 404/405 before any identity
        if request.endpoint not in PUBLIC_ENDPOINTS | runs.TASK_ENDPOINTS:
            g.principal = service.auth.authenticate(request.headers, request.host)

    @app.teardown_request
    def _forget(_: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            unbind(token)
        span = g.pop("span", None)
        if span is not None:
            span.detach()
            if not g.get("streaming"):  # a stream's span ends with the stream
                span.end()
                # Runs before the server writes the body: after it, the CPU is throttled.
                tracing.flush()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        if _sent_a_body(request) and not g.get("body_used"):
            request.environ[BODY_UNREAD] = True
        span = g.get("span", tracing.NO_SPAN)
        span.set("http.response.status_code", response.status_code)
        span.set("agent.session_id", g.get("session_id"))
        if response.status_code >= 500:
            span.fail(str(g.get("outcome") or response.status_code))
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
                    "principal": g.get("principal"),
                    "outcome": g.get("outcome")
                    or ("ok" if response.status_code < 400 else "error"),
                }
            },
        )
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    def _json_body() -> bytes:
        if request.mimetype != "application/json":
            raise errors.ApiError(
                415, "unsupported_media_type", "Send the body as application/json."
            )
        body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
        g.body_used = True
        if request.content_length is None and len(body) >= settings.max_request_bytes:
            # A chunked body has no length to check up front, and werkzeug cuts it at
            # the limit silently; a cut body must not be parsed as if it were whole.
            raise RequestEntityTooLarge()
        return body

    @app.post("/chat")
    def chat() -> Response:
        chat_request = parse_chat(_json_body(), settings.max_message_chars)
        session_id = chat_request.session_id or service.new_session_id()
        if chat_request.background:
            return runs.submit(service, chat_request, session_id, parse_key(request.headers))
        return _turn(session_id, chat_request.message, chat_request.session_id, chat_request.stream)

    @app.post("/sessions/<session_id>/approvals")
    def decide(session_id: str) -> Response:
        check_session_id(session_id)
        decided = parse_decisions(_json_body())
        resume = Resume(decided.pause_id, decided.verdicts, by=g.principal)
        return _turn(session_id, resume, session_id, decided.stream)

    def _turn(
        session_id: str, message: str | Resume, requested: str | None, stream: bool | None
    ) -> Response:
        """Run a turn (a message, or decisions that resume a paused run) and answer
        it: JSON or streamed, under the request's Idempotency-Key if it has one."""
        key = parse_key(request.headers)
        g.session_id = session_id
        if sse.wants_stream(stream, request.accept_mimetypes):
            return _stream(session_id, message, requested, key)
        replayed = False
        if key is None:
            outcome = service.turns.run(session_id, message, g.started, owner=g.principal)
        else:
            outcome, replayed = run_once(
                service.idempotency,
                service.turns,
                principal=g.principal,
                key=key,
                message=message,
                requested_session_id=requested,
                session_id=session_id,
                started=g.started,
                budget_seconds=settings.turn_budget_seconds,
            )
        g.session_id = outcome.session_id
        g.usage = None if replayed else outcome.usage
        g.outcome = "replayed" if replayed else None
        response = jsonify(chat_response(outcome))
        if replayed:
            response.headers[REPLAYED_HEADER] = "true"
        return response

    def _stream(
        session_id: str, message: str | Resume, requested: str | None, key: str | None
    ) -> Response:
        started, request_id = g.started, g.request_id
        replayed = False
        if key is None:
            events = service.turns.stream(
                session_id, message, started, sse.KEEPALIVE_SECONDS, owner=g.principal
            )
        else:
            events, replayed = stream_once(
                service.idempotency,
                service.turns,
                principal=g.principal,
                key=key,
                message=message,
                requested_session_id=requested,
                session_id=session_id,
                started=started,
                budget_seconds=settings.turn_budget_seconds,
                idle_seconds=sse.KEEPALIVE_SECONDS,
            )
        g.outcome = "replayed" if replayed else "streamed"
        g.streaming, span = True, g.span

        def on_end(ending: str, usage: Usage | None) -> None:
            # The request line was logged when the headers went out; this is the outcome.
            fields = {"request_id": request_id, "session_id": session_id, "ending": ending}
            spent = None if replayed else usage  # a replay spent nothing on the model
            fields |= {"usage": spent, "latency_ms": round((time.monotonic() - started) * 1000, 1)}
            fields |= span.log_fields(service.project)
            log.info("stream ended: %s", ending, extra={"fields": fields})
            span.set("agent.stream_ending", ending)
            if ending == "internal_error":
                span.fail(ending)
            span.end()
            tracing.flush()  # before the stream's last chunk: the CPU is throttled after

        response = sse.sse_response(
            _in_span(span, events),
            max_event_bytes=sse.event_budget(settings),
            request_id=request_id,
            on_end=on_end,
        )
        if replayed:
            response.headers[REPLAYED_HEADER] = "true"
        return response

    @app.get("/sessions/<session_id>")
    def get_session(session_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        history = service.sessions.load(session_id, owner=g.principal)
        summary = None
        if history.summary is not None:
            made = history.summary_provenance  # None: written before provenance was kept
            summary = {
                "text": history.summary,
                "covers_items": history.summary_items,
                "covers_turns": made.turns if made else None,
                "written_at": rfc3339(made.written_at) if made else None,
                "model": made.model if made else None,
            }
        return jsonify(
            session_id=session_id,
            items=history.items,
            turns=history.turns,
            expires_at=rfc3339(history.expire_at),
            summary=summary,
            pause_id=history.pause_id,
            pending_approvals=[call.as_json() for call in history.pending],
            approvals=list(history.approvals),
            usage=history.totals.as_doc(),
        )

    @app.delete("/sessions/<session_id>")
    def delete_session(session_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        service.sessions.delete(session_id, owner=g.principal)
        return Response(status=204)

    @app.get("/sessions/<session_id>/results/<turn_id>")
    def get_result(session_id: str, turn_id: str) -> Response:
        check_session_id(session_id)
        g.session_id = session_id
        return jsonify(service.sessions.resign_result(session_id, turn_id, g.principal).as_json())

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

    app.register_blueprint(runs.blueprint(service))
    playground.install(app, settings)
    cors.install(app, csv(settings.cors_allowed_origins))
    return app


def _sent_a_body(req: Request) -> bool:
    chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
    return chunked or bool(req.content_length)


def _in_span(span: tracing.Span, events: Events) -> Events:
    """A streamed body is read after the request's context is gone: its span is made
    current again while each of the turn's events is produced, and at its close."""
    try:
        while True:
            with span.made_current():
                try:
                    item = next(events)
                except StopIteration:
                    return
            yield item
    finally:
        with span.made_current():
            events.close()  # on a disconnect: cancels the run and releases the session


def _error_response(error: errors.ApiError, request_id: str | None = None) -> Response:
    g.outcome = error.code
    response = jsonify(error.body(request_id))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response
