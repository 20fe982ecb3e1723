"""A stand-in Cloud Tasks v2 gRPC server on loopback, in process.

Built from google-cloud-tasks' own message definitions (``CreateTaskRequest``,
``Task``, ... and the service's method paths): the real client library talks to it over
real gRPC, so what is tested is the bytes the library sends. It models what Cloud
Tasks does with what this service uses:

- ``CreateTask`` on a known queue: the name must be ``{parent}/tasks/ID`` with ID of
  ``[A-Za-z0-9_-]``, at most 500 characters; a name that exists, or existed (executed
  or deleted: Cloud Tasks keeps it about an hour, this stand-in for ever), answers
  ALREADY_EXISTS; an unknown queue NOT_FOUND; an HTTP task needs an http(s) URL, a
  dispatch deadline within 15 s - 30 min. The stored task gets a ``create_time`` and,
  when none was given, a ``schedule_time`` of now.
- ``GetTask`` / ``DeleteTask``; ``execute(name)`` removes a task as a dispatch would.
- ``fail_next(code, n)`` answers the next ``n`` calls with ``code`` (what a quota, a
  missing permission or an outage looks like to the client); ``hold_next(seconds)``
  holds the next reply (a timeout), after the task was stored.

Every request is recorded (``requests``) with the call's metadata.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud.tasks_v2.types import cloudtasks
from google.cloud.tasks_v2.types import task as task_types
from google.protobuf import empty_pb2

SERVICE = "google.cloud.tasks.v2.CloudTasks"
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")


@dataclass
class Recorded:
    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class CloudTasksStandIn:
    queues: set[str]
    tasks: dict[str, task_types.Task] = field(default_factory=dict)
    used_names: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)
    _failures: list[grpc.StatusCode] = field(default_factory=list)
    _hold: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None
    port: int = 0

    # --- control ---------------------------------------------------------------------

    def start(self) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((self._handlers(),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)

    def fail_next(self, code: grpc.StatusCode, n: int = 1) -> None:
        with self._lock:
            self._failures.extend([code] * n)

    def hold_next(self, seconds: float) -> None:
        self._hold = seconds

    def execute(self, name: str) -> task_types.Task:
        """Dispatch succeeded: the task is gone, its name stays taken."""
        with self._lock:
            return self.tasks.pop(name)

    def creates(self) -> list[cloudtasks.CreateTaskRequest]:
        return [r.request for r in self.requests if r.method == "CreateTask"]

    # --- the service -----------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        def method(
            fn: Callable[[Any, grpc.ServicerContext], Any], request_type: Any, reply: Any
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.deserialize, response_serializer=reply
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateTask": method(
                    self._create, cloudtasks.CreateTaskRequest, task_types.Task.serialize
                ),
                "GetTask": method(self._get, cloudtasks.GetTaskRequest, task_types.Task.serialize),
                "DeleteTask": method(
                    self._delete, cloudtasks.DeleteTaskRequest, empty_pb2.Empty.SerializeToString
                ),
            },
        )

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata()}
        with self._lock:
            self.requests.append(Recorded(name, request, metadata))
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            context.abort(failure, f"stand-in: {failure.name}")

    def _create(
        self, request: cloudtasks.CreateTaskRequest, context: grpc.ServicerContext
    ) -> task_types.Task:
        self._enter("CreateTask", request, context)
        if request.parent not in self.queues:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Queue does not exist: {request.parent}")
        task = task_types.Task(request.task)
        prefix = request.parent + "/tasks/"
        if task.name:
            if not task.name.startswith(prefix) or not _TASK_ID.fullmatch(task.name[len(prefix) :]):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid task name {task.name}")
        else:
            task.name = prefix + str(len(self.used_names) + 1)
        http = task.http_request
        if not http.url.startswith(("https://", "http://")):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "HttpRequest.url must be http(s)")
        if "dispatch_deadline" in task:
            seconds = task.dispatch_deadline.total_seconds()
            if not 15 <= seconds <= 1800:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "dispatch_deadline must be in [15s, 30m]"
                )
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            if task.name in self.used_names:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "The task cannot be created because a task with this name existed too"
                    " recently.",
                )
            self.used_names.add(task.name)
            task.create_time = now
            if "schedule_time" not in task:
                task.schedule_time = now
            self.tasks[task.name] = task
        if self._hold:
            hold, self._hold = self._hold, 0.0
            time.sleep(hold)
        return task

    def _get(self, request: cloudtasks.GetTaskRequest, context: grpc.ServicerContext) -> Any:
        self._enter("GetTask", request, context)
        with self._lock:
            task = self.tasks.get(request.name)
        if task is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Task does not exist.")
        return task

    def _delete(
        self, request: cloudtasks.DeleteTaskRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._enter("DeleteTask", request, context)
        with self._lock:
            gone = self.tasks.pop(request.name, None)
        if gone is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Task does not exist.")
        return empty_pb2.Empty()
