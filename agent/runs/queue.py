"""The queue that delivers a background run's work: each task is one HTTP POST.

``Queue`` is what the engine needs of a queue: ``enqueue(task)``, at least once, with a
task name that refuses a second task of the same name (so a slice that enqueues its
successor twice, after a lost reply, makes one task). Two implementations:

* ``LocalQueue`` (here): off Cloud Functions the process is its own queue. A thread
  POSTs each task to ``{target_url}{path}`` with the headers Cloud Tasks sends, retries
  a non-2xx answer or a failed connection with exponential backoff, bounds each
  attempt by a dispatch deadline, and remembers names it has seen. Its requests carry
  a secret made at start (``TASK_SECRET_HEADER``): the task route of the same process
  accepts only that (``agent/auth/tasks.py``).
* ``CloudTasksQueue`` (``cloud_tasks.py``): ``create_task`` on ``RUNS_QUEUE`` with the
  invoker's OIDC token; ``ALREADY_EXISTS`` counts as done.

A task's body is JSON: ``{"run_id", "step"}`` for a run's slice (``step_task``).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

RUN_TASK_PATH = "/tasks/runs"
"""The route that works on a run's slice."""
TASK_SECRET_HEADER = "X-Agent-Task-Secret"
"""The local queue's proof that a task request comes from this process's own queue."""
LOCAL_QUEUE_NAME = "local"


@dataclass(frozen=True, kw_only=True)
class Task:
    """One delivery: POST ``body`` (JSON) to ``target_url`` + ``path``."""

    name: str
    """Unique per unit of work: a second enqueue with the same name is dropped."""
    target_url: str
    """The service's base URL (``https://host`` or ``http://127.0.0.1:port``)."""
    body: dict[str, Any]
    path: str = RUN_TASK_PATH
    delay_seconds: float = 0.0
    """Not delivered before this many seconds from now."""

    @property
    def url(self) -> str:
        return self.target_url.rstrip("/") + self.path


def step_task(run_id: str, step: int, target_url: str, delay_seconds: float = 0.0) -> Task:
    """The task that works on ``run_id`` from ``step``: named ``{run_id}-{step}``, so a
    step is enqueued once however often its predecessor enqueues it."""
    return Task(
        name=f"{run_id}-{step}",
        target_url=target_url,
        body={"run_id": run_id, "step": step},
        delay_seconds=delay_seconds,
    )


class Queue(Protocol):
    """Delivers tasks at least once; refuses a name it has seen (silently)."""

    def enqueue(self, task: Task) -> None:
        """Accept ``task`` for delivery; returns once it is accepted (not delivered).
        Raises on failure to accept (then nothing was enqueued, or the same name was)."""
        ...


@dataclass(order=True)
class _Due:
    at: float
    order: int
    task: Task = field(compare=False)
    attempt: int = field(default=0, compare=False)


class LocalQueue:
    """The in-process queue: a daemon thread delivering tasks over HTTP as Cloud Tasks
    would (its headers; retries with backoff ``min_backoff`` doubling up to
    ``max_backoff``; each attempt bounded by ``dispatch_deadline`` seconds; at least
    once). ``copies`` delivers every attempt that many times (tests of duplicate
    delivery). Attempts run on ``workers`` threads, so a long slice does not hold up
    other runs' tasks."""

    def __init__(
        self,
        *,
        dispatch_deadline: float,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        max_attempts: int = 100,
        copies: int = 1,
        workers: int = 4,
        secret: str | None = None,
        name_memory_seconds: float = 3600.0,
    ) -> None:
        self.secret = secret or secrets.token_urlsafe(32)
        """Sent with every task; the task route compares it (constant time)."""
        self._deadline = dispatch_deadline
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._max_attempts = max_attempts
        self._copies = copies
        self._memory = name_memory_seconds
        self._due: list[_Due] = []
        self._names: dict[str, float] = {}
        self._order = itertools.count()
        self._lock = threading.Condition()
        self._closed = False
        self._idle = threading.Semaphore(workers)
        self._dispatcher = threading.Thread(target=self._dispatch, name="local-queue", daemon=True)
        self._dispatcher.start()

    def enqueue(self, task: Task) -> None:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise RuntimeError("the local queue is closed")
            self._forget(now)
            if task.name in self._names:
                log.info("task %s enqueued again: dropped (named)", task.name)
                return
            self._names[task.name] = now
            heapq.heappush(self._due, _Due(now + task.delay_seconds, next(self._order), task))
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._dispatcher.join(timeout=2)

    def _forget(self, now: float) -> None:
        if len(self._names) < 10_000:
            return
        self._names = {n: t for n, t in self._names.items() if now - t < self._memory}

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._due or self._due[0].at > time.monotonic()):
                    wait = self._due[0].at - time.monotonic() if self._due else None
                    self._lock.wait(timeout=wait)
                if self._closed:
                    return
                due = heapq.heappop(self._due)
            self._idle.acquire()
            threading.Thread(
                target=self._attempt, args=(due,), name=f"task-{due.task.name}", daemon=True
            ).start()

    def _attempt(self, due: _Due) -> None:
        try:
            if self._copies == 1:
                results = [self._post(due.task, due.attempt)]
            else:  # duplicates arrive together, as a redelivery racing the first may
                results = [False] * self._copies

                def one(i: int) -> None:
                    results[i] = self._post(due.task, due.attempt)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(self._copies)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            self._idle.release()
        if any(ok for ok in results):
            return
        if due.attempt + 1 >= self._max_attempts:
            log.error("task %s dropped after %d attempts", due.task.name, due.attempt + 1)
            return
        backoff = min(self._max_backoff, self._min_backoff * 2**due.attempt)
        with self._lock:
            if self._closed:
                return
            again = _Due(time.monotonic() + backoff, next(self._order), due.task, due.attempt + 1)
            heapq.heappush(self._due, again)
            self._lock.notify()

    def _post(self, task: Task, attempt: int) -> bool:
        """One delivery; True when the target answered 2xx."""
        request = urllib.request.Request(
            task.url,
            data=json.dumps(task.body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Google-Cloud-Tasks",
                "X-CloudTasks-QueueName": LOCAL_QUEUE_NAME,
                "X-CloudTasks-TaskName": task.name,
                "X-CloudTasks-TaskRetryCount": str(attempt),
                "X-CloudTasks-TaskExecutionCount": str(attempt),
                TASK_SECRET_HEADER: self.secret,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._deadline) as reply:
                reply.read()
                return bool(200 <= reply.status < 300)
        except urllib.error.HTTPError as exc:
            exc.read()
            log.info("task %s answered %d: retried", task.name, exc.code)
            return False
        except (OSError, TimeoutError) as exc:
            log.info("task %s not delivered (%s): retried", task.name, type(exc).__name__)
            return False
