"""The background runs' routes (a Blueprint): submit, read, follow, cancel, and the task.

``POST /chat`` with ``"background": true`` is answered here (``submit``): 202 with the
run and ``Location: /runs/<run_id>``. ``GET /runs/<id>``, ``GET /runs/<id>/events``
and ``POST /runs/<id>/cancel`` are the owner's only (404 otherwise, as for sessions).
``POST /tasks/runs`` is the queue's, not a caller's: it skips caller authentication
(``TASK_ENDPOINTS``) and accepts only the queue's credential (``agent/auth/tasks.py``).

The events stream: each event is ``id: <seq>``, ``event: <type>``, ``data: <json>``;
``Last-Event-ID`` (or ``?after=<n>``) replays what follows that id, then it follows the
run live. It ends after the terminal ``status`` event (``done`` or ``error`` comes just
before it); while the run goes on it sends a comment at least every
``HEARTBEAT_SECONDS`` and closes itself before the function's timeout with a ``retry:``
hint, so a standard SSE client reconnects with ``Last-Event-ID`` and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from agent.api.requests import ChatRequest
from agent.api.responses import chat_response, rfc3339
from agent.base import errors
from agent.base.clock import utc_now
from agent.runs import webhooks
from agent.runs.queue import TASK_SECRET_HEADER
from agent.service import Service
from agent.store.run_records import Run
from agent.turn.store_errors import store_errors_as_api_errors

log = logging.getLogger(__name__)

TASK_ENDPOINTS = frozenset({"runs.task", "runs.webhook_task"})
"""Endpoints that authenticate the queue, not a caller (``before_request`` skips them)."""
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 0.5
RETRY_MILLISECONDS = 1000
"""The ``retry:`` hint: how soon a client reconnects after the stream closes itself."""
_MAX_AFTER = 10**12

__all__ = ["TASK_ENDPOINTS", "TASK_SECRET_HEADER", "blueprint", "run_body", "submit"]


def submit(service: Service, chat: ChatRequest, session_id: str, key: str | None) -> Response:
    """``POST /chat`` with ``background``: store and enqueue the run, answer 202."""
    runs = service.runs
    run_id = None
    if key is not None:
        # The same key names the same run: a retry whose 202 was lost finds it.
        digest = hashlib.sha256(f"{g.principal}\0{key}".encode()).hexdigest()
        run_id = f"k{digest[:31]}"
        known = runs.store.get(run_id, utc_now(), g.principal)
        if known is not None and known.owner == g.principal:
            return _accepted(known)
    settings = service.settings
    target = settings.runs_target_url or request.host_url
    run = runs.submit(
        session_id=session_id,
        message=chat.message,
        owner=g.principal,
        target_url=target,
        enqueue=chat.enqueue,
        webhook=None if chat.webhook is None else webhooks.check_webhook(chat.webhook, settings),
        run_id=run_id,
    )
    return _accepted(run)


def _accepted(run: Run) -> Response:
    g.session_id = run.session_id
    response = jsonify(
        run_id=run.run_id,
        session_id=run.session_id,
        status=run.status,
        new_session=bool(run.request.get("new_session")),
    )
    response.status_code = 202
    response.headers["Location"] = f"/runs/{run.run_id}"
    return response


def run_body(run: Run) -> dict[str, Any]:
    """``GET /runs/<id>``: the run's status, and its outcome once it has one."""
    body: dict[str, Any] = {
        "run_id": run.run_id,
        "session_id": run.session_id,
        "status": run.status,
        "created_at": rfc3339(run.created_at),
        "updated_at": rfc3339(run.updated_at),
        "usage": run.usage,
    }
    if run.status == "completed" and run.response is not None:
        body["response"] = run.response
    if run.status == "failed" and run.error is not None:
        body["error"] = run.error
    if run.status == "approval_required" and run.pending is not None:
        body |= run.pending
    if run.cancel is not None and not run.ended:
        body["cancel"] = run.cancel
    return body


def blueprint(service: Service) -> Blueprint:
    routes = Blueprint("runs", __name__)
    settings = service.settings

    @routes.get("/runs/<run_id>")
    def get_run(run_id: str) -> Response:
        _check_run_id(run_id)
        return jsonify(run_body(service.runs.get(run_id, g.principal)))

    @routes.get("/runs/<run_id>/events")
    def run_events(run_id: str) -> Response:
        _check_run_id(run_id)
        after = _after()
        service.runs.get(run_id, g.principal)  # 404 before the stream starts
        until = g.started + settings.turn_budget_seconds - 1
        return _stream(service, run_id, after, until)

    @routes.post("/runs/<run_id>/cancel")
    def cancel_run(run_id: str) -> Response:
        _check_run_id(run_id)
        action = _action()
        run = service.runs.cancel(run_id, g.principal, action)
        return jsonify(run_body(run))

    @routes.post("/tasks/runs")
    def task() -> Response:
        service.task_auth.check(request.headers)
        run_id, step = _task_body()
        service.runs.work(run_id, step, g.started, chat_response)
        return jsonify(run_id=run_id, step=step)

    @routes.post(webhooks.WEBHOOK_TASK_PATH)
    def webhook_task() -> Response:
        """One attempt at a run's webhook message: the run's ``GET /runs/<id>`` body as
        it is now, signed. A message overtaken by a later status (an approval decided
        meanwhile) is dropped: that status sends its own. Non-2xx from the receiver:
        503, and the queue tries again."""
        service.task_auth.check(request.headers)
        run_id, step, status = _webhook_body()
        with store_errors_as_api_errors():
            run = service.runs.store.get(run_id, utc_now())
        url = run.request.get("webhook") if run is not None else None
        if run is None or url is None or run.status != status:
            return jsonify(run_id=run_id, delivered=False)
        try:
            webhooks.deliver(
                url, run_body(run), settings, msg_id=webhooks.message_id(run_id, status, step)
            )
        except webhooks.WebhookFailed as failed:
            log.warning("run %s: webhook not delivered: %s", run_id, failed)
            raise errors.ApiError(
                503,
                "webhook_undelivered",
                "The webhook's receiver did not accept it; the queue retries.",
                {"Retry-After": "10"},
            ) from None
        except errors.ApiError:
            # No longer allowed here (the settings changed since submit): never sent.
            log.warning("run %s: webhook URL refused at delivery; dropped", run_id)
            return jsonify(run_id=run_id, delivered=False)
        return jsonify(run_id=run_id, delivered=True)

    return routes


def _stream(service: Service, run_id: str, after: int, until: float) -> Response:
    events = service.runs.follow(
        run_id,
        after,
        until=until,
        poll_seconds=POLL_SECONDS,
        heartbeat_seconds=HEARTBEAT_SECONDS,
    )

    def body() -> Iterator[bytes]:
        yield f"retry: {RETRY_MILLISECONDS}\n: stream open\n\n".encode()
        try:
            for event in events:
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"))
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()
        except errors.ApiError as error:
            # The store failed mid-stream: the client reconnects from its last id.
            yield f"retry: {RETRY_MILLISECONDS}\n: {error.code}\n\n".encode()
        finally:
            events.close()

    response = Response(body(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _check_run_id(run_id: str) -> None:
    if not (0 < len(run_id) <= 64 and run_id.replace("-", "").replace("_", "").isalnum()):
        raise errors.ApiError(404, "run_not_found", "No such run.")


def _after() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
    if not raw.isdigit() or int(raw) > _MAX_AFTER:
        raise errors.bad_request(
            "invalid_event_id", "Last-Event-ID (or 'after') must be a non-negative integer."
        )
    return int(raw)


def _json(optional: bool) -> dict[str, Any]:
    data = request.get_data(cache=False)
    g.body_used = True
    if not data and optional:
        return {}
    if request.mimetype != "application/json":
        raise errors.ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise errors.bad_request("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise errors.bad_request("invalid_request", "The body must be a JSON object.")
    return body


def _action() -> Any:
    body = _json(optional=True)
    if set(body) - {"action"}:
        raise errors.bad_request("invalid_request", "The body may hold 'action' only.")
    action = body.get("action", "interrupt")
    if action not in ("interrupt", "rollback"):
        raise errors.bad_request("invalid_request", "'action' must be 'interrupt' or 'rollback'.")
    return action


def _webhook_body() -> tuple[str, int, str]:
    """A webhook task: ``{"run_id", "step", "status"}`` (``webhooks.webhook_task``)."""
    body = _json(optional=False)
    status = body.get("status")
    if not isinstance(status, str):
        raise errors.bad_request("invalid_task", "A webhook task has a string 'status'.")
    run_id, step = _checked_task(body)
    return run_id, step, status


def _task_body() -> tuple[str, int]:
    return _checked_task(_json(optional=False))


def _checked_task(body: dict[str, Any]) -> tuple[str, int]:
    run_id, step = body.get("run_id"), body.get("step")
    if not isinstance(run_id, str) or isinstance(step, bool) or not isinstance(step, int):
        raise errors.bad_request("invalid_task", "A task is {'run_id': str, 'step': int}.")
    if step < 0:
        raise errors.bad_request("invalid_task", "'step' must not be negative.")
    _check_run_id(run_id)
    return run_id, step
