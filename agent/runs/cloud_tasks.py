"""The queue on Cloud Functions: each task becomes a named Cloud Tasks HTTP task.

``CloudTasksQueue.enqueue(task)`` creates ``{RUNS_QUEUE}/tasks/{name}``: a POST of the
task's JSON body to ``RUNS_TARGET_URL`` + the task's path (``/tasks/runs``), carrying
an OIDC token of ``RUNS_INVOKER`` for the audience ``RUNS_TARGET_URL`` (Cloud Run checks
it; the task route accepts only that identity), a dispatch deadline bounded by the
function's timeout (Cloud Tasks would otherwise wait up to 10 min on an instance the platform cut
at its timeout) and a schedule time for a delayed task.

The name is what makes a duplicate enqueue harmless: Cloud Tasks refuses a second task
of the same name with ALREADY_EXISTS, also for a while after the first ran or was
deleted, so that answer means "already enqueued" and is success. Because of that a
create whose reply was lost can be retried safely, and is (UNAVAILABLE and
DEADLINE_EXCEEDED, within twice the store timeout). Any other failure is a 503
``queue_unavailable`` for the caller; the text stays in the log.

google-cloud-tasks costs about 0.65 s to import (2 cores), so it is imported on the
first enqueue, never at cold start, and never where ``RUNS_QUEUE`` is unset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import threading
from typing import TYPE_CHECKING, Any

from agent.base.errors import ApiError
from agent.base.settings import LOOPBACK_HOSTS, Settings
from agent.runs.queue import Task

if TYPE_CHECKING:
    from google.cloud import tasks_v2

log = logging.getLogger(__name__)

MIN_DISPATCH_DEADLINE_SECONDS = 15
MAX_DISPATCH_DEADLINE_SECONDS = 1800
"""Cloud Tasks' bounds for an HTTP task's dispatch deadline (15 s to 30 min)."""

_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,400}")


def queue_unavailable() -> ApiError:
    return ApiError(
        503,
        "queue_unavailable",
        "The task queue is unavailable; retry shortly.",
        {"Retry-After": "5"},
    )


class CloudTasksQueue:
    """The engine's ``Queue`` on Cloud Tasks. Thread-safe; the client is built once, on
    the first enqueue. ``endpoint`` (tests only, loopback only) points it at a stand-in
    over plaintext gRPC; otherwise it talks to cloudtasks.googleapis.com with the
    runtime's own credentials."""

    def __init__(self, settings: Settings, *, endpoint: str | None = None) -> None:
        if not settings.runs_queue or not settings.runs_invoker or not settings.runs_target_url:
            raise ValueError("CloudTasksQueue needs RUNS_QUEUE, RUNS_INVOKER and RUNS_TARGET_URL")
        if endpoint is not None and endpoint.rsplit(":", 1)[0].strip("[]") not in LOOPBACK_HOSTS:
            raise ValueError("a plaintext Cloud Tasks endpoint must be a loopback host")
        self._queue = settings.runs_queue
        self._invoker = settings.runs_invoker
        self._target = settings.runs_target_url.rstrip("/")
        self._timeout = settings.store_timeout
        self._deadline = min(
            MAX_DISPATCH_DEADLINE_SECONDS,
            max(MIN_DISPATCH_DEADLINE_SECONDS, settings.function_timeout_seconds),
        )
        self._endpoint = endpoint
        self._client: tasks_v2.CloudTasksClient | None = None
        self._lock = threading.Lock()

    def task_name(self, name: str) -> str:
        """The full task name of the engine's ``name`` (``{run_id}-{step}``). A short
        hash in front spreads the names over Cloud Tasks' key space: sequential names
        (same prefix, growing suffix) are the pattern its documentation says adds
        latency. Deterministic, so a duplicate enqueue gets the same name."""
        if not _TASK_ID.fullmatch(name):
            raise ValueError(f"task name {name!r} is not [A-Za-z0-9_-]")
        spread = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{self._queue}/tasks/{spread}-{name}"

    def enqueue(self, task: Task) -> None:
        """Create the task; return when Cloud Tasks holds it (or held one of its name).
        Raises ``ApiError`` 503 ``queue_unavailable`` when it could not be created."""
        from google.api_core import exceptions, retry

        client = self._get_client()
        request = self._request(task)
        retried = retry.Retry(
            predicate=retry.if_exception_type(
                exceptions.ServiceUnavailable, exceptions.DeadlineExceeded
            ),
            initial=0.1,
            maximum=1.0,
            timeout=self._timeout * 2,
        )
        try:
            client.create_task(request=request, timeout=self._timeout, retry=retried)
        except exceptions.AlreadyExists:
            log.info("task %s was enqueued already", request["task"]["name"])
            return
        except exceptions.GoogleAPICallError as error:
            log.error(
                "Cloud Tasks refused task %s: %s %s",
                request["task"]["name"],
                type(error).__name__,
                error.message,
            )
            raise queue_unavailable() from None
        except exceptions.RetryError as error:
            log.error("Cloud Tasks did not answer for task %s: %s", request["task"]["name"], error)
            raise queue_unavailable() from None

    def _request(self, task: Task) -> dict[str, Any]:
        # Always RUNS_TARGET_URL, never the task's own base URL: that one may come from
        # a request's Host header, and the token's audience must be the function's URL.
        http_request: dict[str, Any] = {
            "url": self._target + task.path,
            "http_method": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(task.body, separators=(",", ":")).encode(),
            "oidc_token": {"service_account_email": self._invoker, "audience": self._target},
        }
        created: dict[str, Any] = {
            "name": self.task_name(task.name),
            "http_request": http_request,
            "dispatch_deadline": dt.timedelta(seconds=self._deadline),
        }
        if task.delay_seconds > 0:
            created["schedule_time"] = dt.datetime.now(dt.UTC) + dt.timedelta(
                seconds=task.delay_seconds
            )
        return {"parent": self._queue, "task": created}

    def _get_client(self) -> tasks_v2.CloudTasksClient:
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> tasks_v2.CloudTasksClient:
        from google.cloud import tasks_v2

        if self._endpoint is None:
            return tasks_v2.CloudTasksClient()
        import grpc
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        channel = grpc.insecure_channel(self._endpoint)
        return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
