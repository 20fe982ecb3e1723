"""A service served over real HTTP in this process, for background runs: its local queue
delivers each task to it over HTTP as Cloud Tasks would, and the test counts the tasks."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from agent.api.app import create_app
from agent.base.settings import Settings
from agent.runs.queue import Queue
from agent.service import Service, build_service

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
TERMINAL = ("completed", "failed", "cancelled")


class RunServer:
    """The app on a werkzeug threaded server on a free loopback port."""

    def __init__(self, env: dict[str, str], queue: Queue | None = None) -> None:
        settings = Settings.from_env(env)
        self.service: Service = build_service(settings, queue=queue)
        self.app = create_app(self.service)
        self.tasks: list[dict[str, Any]] = []
        """Every task delivery that reached the route (its body and answer status)."""
        self._lock = threading.Lock()
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._count, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _count(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/tasks/runs":
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)
        seen: dict[str, Any] = {}

        def recorded(status: str, headers: Any, *rest: Any) -> Any:
            seen["status"] = int(status.split()[0])
            return start_response(status, headers, *rest)

        body = list(self.app(environ, recorded))
        with self._lock:
            self.tasks.append({"body": json.loads(raw or b"{}"), "status": seen.get("status")})
        return body

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=({"Content-Type": "application/json"} if body is not None else {})
            | (headers or {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, got = response.read(), response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, got = error.read(), error.code, error.headers
        return status, json.loads(raw) if raw else {}, dict(got)

    def wait(
        self,
        run_id: str,
        timeout: float = 60,
        until: tuple[str, ...] = TERMINAL,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The run once its status is one of ``until``."""
        ends = time.monotonic() + timeout
        while True:
            status, run, _ = self.call("GET", f"/runs/{run_id}", headers=headers)
            assert status == 200, run
            if run["status"] in until:
                return run
            assert time.monotonic() < ends, f"run still {run['status']}"
            time.sleep(0.1)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.service.close()


def with_settings(service: Service, **changes: Any) -> Service:
    return dataclasses.replace(service, settings=dataclasses.replace(service.settings, **changes))
