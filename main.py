"""Cloud Functions entry point: ``agent_http``.

Deploy with ``--entry-point=agent_http``; run locally with
``functions-framework --target=agent_http``. The service is built at import, while
the platform starts the instance and before it receives traffic; nothing here
makes a network call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
from typing import Any

import functions_framework
from flask import Request, Response, current_app, has_app_context
from flask import request as flask_request

from agent.api.app import BODY_UNREAD, create_app
from agent.base.logs import configure_logging
from agent.base.settings import Settings
from agent.runtime.factory import FactoryError
from agent.service import build_service

_settings = Settings.from_env()
configure_logging(_settings.log_level)
try:
    app = create_app(build_service(_settings))
except FactoryError as exc:
    # The user's code failed: one line that names the factory and what it raised, not a
    # traceback through the service's start-up; and no instance that serves without it.
    logging.getLogger("main").critical("agent factory failed, not starting: %s", exc)
    raise SystemExit(1) from None


@functions_framework.http
def agent_http(request: Request) -> Response:
    # The framework routes every path here; the inner app does the real routing.
    with app.request_context(request.environ):
        response = app.full_dispatch_request()
    if request.environ.get(BODY_UNREAD):
        _leave_body_unread(request.environ, response)
    return response


def _leave_body_unread(environ: dict[str, Any], response: Response) -> None:
    """Keep a refused request's body unread, and end the connection after the reply.

    functions-framework's outer app reads the whole body after every non-streamed
    response (its ``read_request`` after-request hook), with no size limit and no time
    limit: a client announcing 20 MB and trickling it would hold a thread and make the
    instance buffer it all, even for a 401. That hook reads through a stream its request
    builds from the WSGI environ when first asked, which happens only in the hook; so the
    environ it will read from gets an empty body. The real socket keeps the rest: once the
    reply is sent, the write side is shut (the client sees the end of the connection
    rather than waiting to send the rest), and gunicorn discards at most 64 KiB for at
    most a few seconds before it closes the socket.
    """
    environ["wsgi.input"] = io.BytesIO()
    environ["CONTENT_LENGTH"] = "0"
    connection = environ.get("gunicorn.socket")  # gunicorn, the server on the platform
    if isinstance(connection, socket.socket):

        def end_connection() -> None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_WR)

        response.call_on_close(end_connection)


if has_app_context():
    # Under functions-framework this module runs inside its outer app, whose catch-all
    # route misses a few paths ("/robots.txt", "/favicon.ico", a path holding a
    # newline) and would answer them with an HTML page. The inner app answers those
    # too, in the API's error shape.
    current_app.register_error_handler(404, lambda _: agent_http(flask_request))
