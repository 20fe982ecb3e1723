"""The cold-start floor: a function that imports what the service cannot do without,
and does nothing else. ``POST /chat`` answers 200 at once."""

from __future__ import annotations

import agents  # noqa: F401
import flask
import functions_framework
import openai  # noqa: F401
from google.cloud import firestore  # noqa: F401


@functions_framework.http
def hello_http(request: flask.Request) -> flask.Response:
    return flask.jsonify(status="ok")
