"""The functions-framework server (gunicorn, ``main.agent_http``) as a child process,
for tests and benchmarks. Its log goes to a file: a pipe nobody reads fills up
after a few hundred requests and then blocks the server mid-request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .emulators import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - outlives this method
            prefix="agent-server-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen[bytes]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target=agent_http",
                "--host=127.0.0.1",
                f"--port={self.port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One JSON request: (status, decoded body or {}, response headers)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers=({"Content-Type": "application/json"} if body is not None else {})
            | (headers or {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status, got = response.read(), response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, got = error.read(), error.code, error.headers
        return status, json.loads(raw) if raw else {}, dict(got)

    def kill(self) -> None:
        """SIGKILL, as when an instance is taken away mid-request."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> str:
        """Stop it; its log. Safe to call again (the log is returned once)."""
        if self.log.closed:
            return ""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        text = Path(self.log.name).read_text(errors="replace")
        os.unlink(self.log.name)
        return text
