"""One long-lived asyncio loop per process, on its own thread.

Flask views are synchronous and run on gunicorn's threads; the Agents SDK and the
OpenAI client are async. ``asyncio.run`` per request breaks the shared client (its
connections are bound to the loop that opened them) and ``Runner.run_sync`` is not
safe across threads. So every coroutine runs on this one loop and the calling
thread waits for its result.

The thread starts on first use, not at construction: functions-framework imports
the app in gunicorn's master and then forks the worker, and threads do not survive
a fork. A loop started before the fork would leave every request waiting forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """The process's one asyncio loop, on a daemon thread; submit coroutines from any
    thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; cancel it and raise TimeoutError after ``timeout``.

        On timeout this returns only once the coroutine has really stopped (or after
        ``CANCEL_GRACE_SECONDS``): the caller releases the session's claim next, and a
        run still going on the loop could otherwise write after that."""
        if timeout <= 0:
            coro.close()
            raise TimeoutError
        task = self.submit(coro)
        try:
            return task.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            task.cancel()
            raise TimeoutError from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> LoopTask[T]:
        """Start ``coro`` on the loop and return at once."""
        return LoopTask(coro, self._running_loop())

    def close(self) -> None:
        with self._lock:
            if self._loop is not None and self._pid == os.getpid():
                self._loop.call_soon_threadsafe(self._loop.stop)
                if self._thread is not None:
                    self._thread.join(timeout=5)
            self._loop, self._thread = None, None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="agent-event-loop", daemon=True
                )
                self._thread.start()
                self._pid = os.getpid()
            return self._loop


CANCEL_GRACE_SECONDS = 5.0
"""How long ``LoopTask.cancel`` waits for the coroutine to unwind."""


class LoopTask(Generic[T]):
    """A coroutine running on the background loop, seen from another thread.

    Unlike ``asyncio.run_coroutine_threadsafe``, whose future reports "cancelled" as
    soon as cancellation is requested, ``finished`` is set only once the coroutine
    has really returned or raised, so the caller can wait for that."""

    def __init__(self, coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> None:
        self.finished = threading.Event()
        self._loop = loop
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._task: asyncio.Task[T] | None = None
        # The coroutine runs in a copy of the submitting thread's context, as it would
        # on that thread: the request's current span (base/tracing.py) and log fields
        # reach the run.
        context = contextvars.copy_context()
        # Both callbacks run on the loop in the order scheduled: start before cancel.
        loop.call_soon_threadsafe(self._start, coro, context)

    def result(self, timeout: float | None = None) -> T:
        """The coroutine's value; raises what it raised, or concurrent.futures errors."""
        return self._future.result(timeout=timeout)

    def cancel(self, grace: float = CANCEL_GRACE_SECONDS) -> None:
        """Cancel the coroutine and wait up to ``grace`` seconds for it to stop."""
        if not self.finished.is_set():
            self._loop.call_soon_threadsafe(self._cancel)
            self.finished.wait(grace)

    def _start(self, coro: Coroutine[Any, Any, T], context: contextvars.Context) -> None:
        self._task = self._loop.create_task(coro, context=context)
        self._task.add_done_callback(self._done)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _done(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._future.cancel()
        elif (error := task.exception()) is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(task.result())
        self.finished.set()
