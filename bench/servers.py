"""The processes a benchmark measures: function servers and the demo model."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from local.emulators import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

# (source file, entry point) of each function the benchmark starts.
SERVICE = ("main.py", "agent_http")
FLOOR = ("bench/floor.py", "hello_http")
NAIVE = ("bench/naive.py", "naive_http")


class FunctionServer:
    """``functions-framework`` serving one function, as Cloud Functions runs it."""

    def __init__(self, function: tuple[str, str], env: dict[str, str]) -> None:
        source, target = function
        self.port = free_port()
        # A file, not a pipe: a pipe nobody reads would block the server once full.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                f"--source={source}",
                f"--target={target}",
                "--host=127.0.0.1",
                f"--port={self.port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.005)
        raise TimeoutError(f"port {self.port} not listening after {timeout} s")

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the children of the process we started."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] or [self.process.pid]

    def worker_pid(self) -> int:
        return self.worker_pids()[0]

    def peak_rss_mib(self, all_workers: bool = False) -> dict[str, float]:
        """Peak resident memory (VmHWM) of gunicorn's master and worker(s)."""
        workers = self.worker_pids() if all_workers else [self.worker_pid()]
        named = [("master", self.process.pid)]
        named += [
            (f"worker {n + 1}" if all_workers else "worker", pid) for n, pid in enumerate(workers)
        ]
        peaks = {}
        for name, pid in named:
            status = Path(f"/proc/{pid}/status").read_text()
            kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
            peaks[name] = int(kib) / 1024
        return peaks

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.log.close()


class ModelProcess:
    """The demo model in its own process, so the load generator does not slow it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.demo_model", f"--port={self.port}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def control(self, **controls: Any) -> None:
        self._post("/_control", controls)

    def reset(self) -> None:
        self._post("/_control/reset", {})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=15)


class OtlpSink:
    """A loopback OTLP/HTTP traces receiver that answers 200 at once and counts what it
    got (a stand-in for a collector next to the function)."""

    def __init__(self) -> None:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector serves it

            def do_POST(self) -> None:
                sink.bytes += len(self.rfile.read(int(self.headers["Content-Length"])))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.requests = 0
        self.bytes = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
