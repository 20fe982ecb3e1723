"""Cloud Functions entry point: ``agent_http``.

Deploy with ``--entry-point=agent_http``; run locally with
``functions-framework --target=agent_http``. The service is built at import, while
the platform starts the instance and before it receives traffic; nothing here
makes a network call.
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response, current_app, has_app_context
from flask import request as flask_request

from agent.api.app import create_app
from agent.base.logs import configure_logging
from agent.base.settings import Settings
from agent.service import build_service

_settings = Settings.from_env()
configure_logging(_settings.log_level)
app = create_app(build_service(_settings))


@functions_framework.http
def agent_http(request: Request) -> Response:
    # The framework routes every path here; the inner app does the real routing.
    with app.request_context(request.environ):
        return app.full_dispatch_request()


if has_app_context():
    # Under functions-framework this module runs inside its outer app, whose catch-all
    # route misses a few paths ("/robots.txt", "/favicon.ico", a path holding a
    # newline) and would answer them with an HTML page. The inner app answers those
    # too, in the API's error shape.
    current_app.register_error_handler(404, lambda _: agent_http(flask_request))
