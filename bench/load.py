"""HTTP load on a function server: single requests, closed-loop clients, statistics."""

from __future__ import annotations

import http.client
import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Client:
    """One keep-alive connection, as a front end holds to an instance."""

    def __init__(self, port: int, timeout: float = 60) -> None:
        self._port, self._timeout = port, timeout
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self._port, timeout=self._timeout
                )
            try:
                self._connection.request(
                    "POST", path, body=data, headers={"Content-Type": "application/json"}
                )
                response = self._connection.getresponse()
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server closed an idle keep-alive connection
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class LoadResult:
    concurrency: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


def closed_loop(
    port: int,
    concurrency: int,
    requests_each: int,
    body_for: Callable[[int, int], dict[str, Any]],
) -> LoadResult:
    """``concurrency`` clients each send ``requests_each`` requests back to back;
    ``body_for(client, n)`` makes each body."""
    result = LoadResult(concurrency)
    lock = threading.Lock()
    go = threading.Barrier(concurrency + 1)

    def client_loop(index: int) -> None:
        client = Client(port)
        go.wait()
        for n in range(requests_each):
            started = time.monotonic()
            try:
                status, body = client.post("/chat", body_for(index, n))
                failure = None if status == 200 else f"{status} {body}"
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
            with lock:
                if failure is None:
                    result.latencies.append(time.monotonic() - started)
                else:
                    result.errors += 1
                    if len(result.error_samples) < 3:
                        result.error_samples.append(failure[:200])
        client.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    result.elapsed = time.monotonic() - started
    return result


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan
