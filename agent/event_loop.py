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
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop; cancel it and raise TimeoutError after ``timeout``."""
        if timeout <= 0:
            coro.close()
            raise TimeoutError
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

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
