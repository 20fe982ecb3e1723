"""Starting and stopping the local emulators, for the dev run and the tests.

The Firestore emulator is Google's own (the Cloud SDK component), started directly
with java: gcloud's wrapper forks, and killing the wrapper leaves java running. The
Cloud Storage emulator is ``gcp-storage-emulator`` from PyPI (requirements-local.in),
in memory. Each runs in its own process group, stopped by that group's id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

FIRESTORE_JAR = Path(
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
)
# Client JIT, serial GC and a small heap: 30-45 % faster start on 2 cores.
_JAVA_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Duser.language=en"]


def firestore_emulator_missing() -> str | None:
    """Why the Firestore emulator cannot run here, or None when it can."""
    jar = Path(os.environ.get("FIRESTORE_EMULATOR_JAR", FIRESTORE_JAR))
    if not jar.exists():
        return (
            f"Firestore emulator not installed ({jar} missing;"
            " Debian package google-cloud-cli-firestore-emulator)"
        )
    if shutil.which("java") is None:
        return "java is not installed (the Firestore emulator needs Java 17+)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@dataclass
class FirestoreEmulator:
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> FirestoreEmulator:
        reason = firestore_emulator_missing()
        if reason:
            raise RuntimeError(reason)
        self.port = self.port or free_port()
        jar = os.environ.get("FIRESTORE_EMULATOR_JAR", str(FIRESTORE_JAR))
        self.process = subprocess.Popen(
            [
                "java",
                *_JAVA_FLAGS,
                "-cp",
                jar,
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--websocket_port={free_port()}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port, timeout)
        return self

    def wipe(self, project: str) -> None:
        url = f"http://{self.host}/emulator/v1/projects/{project}/databases/(default)/documents"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=10).close()

    def stop(self) -> None:
        if self.process is None:
            return
        _stop_group(self.process)
        self.process = None


def storage_emulator_missing() -> str | None:
    """Why the Cloud Storage emulator cannot run here, or None when it can."""
    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError:
        return "gcp-storage-emulator is not installed (pip install -r requirements-local.txt)"
    return None


@dataclass
class StorageEmulator:
    """gcp-storage-emulator in memory with one bucket. It checks no signatures and
    serves one request at a time."""

    bucket: str = "agent-results"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """What STORAGE_EMULATOR_HOST must hold; also the host of its signed URLs."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> StorageEmulator:
        reason = storage_emulator_missing()
        if reason:
            raise RuntimeError(reason)
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gcp_storage_emulator", "start"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--default-bucket", self.bucket, "--in-memory", "--quiet"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:  # GET / answers once the bucket exists
            try:
                urllib.request.urlopen(f"{self.url}/", timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise TimeoutError(f"storage emulator not ready on {self.url}") from None
                time.sleep(0.05)

    def wipe(self) -> None:
        """Delete every object, keeping the bucket."""
        urllib.request.urlopen(f"{self.url}/wipe?keep-buckets=true", timeout=10).close()

    def object_names(self) -> list[str]:
        url = f"{self.url}/storage/v1/b/{self.bucket}/o"
        with urllib.request.urlopen(url, timeout=10) as response:
            listing = json.load(response)
        return sorted(item["name"] for item in listing.get("items", []))

    def stop(self) -> None:
        if self.process is None:
            return
        _stop_group(self.process)
        self.process = None
