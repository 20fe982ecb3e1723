"""Cloud Functions entry point: ``agent_http``.

Deploy with ``--entry-point=agent_http``; run locally with
``functions-framework --target=agent_http``. The service is built at import, while
the platform starts the instance and before it receives traffic; nothing here
makes a network call.
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from agent.http_app import create_app
from agent.logs import configure_logging
from agent.service import build_service
from agent.settings import Settings

_settings = Settings.from_env()
configure_logging(_settings.log_level)
app = create_app(build_service(_settings))


@functions_framework.http
def agent_http(request: Request) -> Response:
    # The framework routes every path here; the inner app does the real routing.
    with app.request_context(request.environ):
        return app.full_dispatch_request()
