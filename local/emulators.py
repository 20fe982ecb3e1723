"""Starting and stopping the local emulators, for the dev run and the tests.

The Firestore emulator is Google's own (the Cloud SDK component), started directly
with java: gcloud's wrapper forks, and killing the wrapper leaves java running. The
Cloud Storage emulator is ``gcp-storage-emulator`` from PyPI (requirements-local.in),
in memory. Each runs in its own process group, stopped by that group's id.

Finding the Firestore emulator (``find_firestore_emulator``), in this order:
``FIRESTORE_EMULATOR_JAR`` (authoritative when set: a wrong path is reported, not
searched around); the Cloud SDK that ``gcloud`` on PATH belongs to (``gcloud info``);
then the usual install places (Debian/Ubuntu package, Homebrew, the tarball's
``~/google-cloud-sdk``). Then Java: Cloud SDK 529 and later run the emulator on Java
21 only, 528 and earlier on 17. What is missing is said in one line with how to
install it; nothing here raises for a missing emulator.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_EMULATOR_DIR = Path("platform/cloud-firestore-emulator")
_JAR_NAME = "cloud-firestore-emulator.jar"
FIRESTORE_JAR = Path("/usr/lib/google-cloud-sdk") / _EMULATOR_DIR / _JAR_NAME
"""Where the Debian package google-cloud-cli-firestore-emulator puts it."""
_USUAL_SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",  # Debian/Ubuntu packages
    "/usr/share/google-cloud-sdk",
    "/opt/homebrew/share/google-cloud-sdk",  # Homebrew cask, Apple silicon
    "/opt/homebrew/Caskroom/google-cloud-sdk/latest/google-cloud-sdk",
    "/usr/local/share/google-cloud-sdk",  # Homebrew cask, Intel
    "/usr/local/Caskroom/google-cloud-sdk/latest/google-cloud-sdk",
    "/snap/google-cloud-cli/current",
    "~/google-cloud-sdk",  # the tarball's default
)
INSTALL_HINT = (
    "install it with `gcloud components install cloud-firestore-emulator` or"
    " `apt-get install google-cloud-cli-firestore-emulator`, or set FIRESTORE_EMULATOR_JAR"
)
# SDK 529 (2025-07) moved the emulator to Java 21; 528 and earlier run on Java 17.
_JAVA_21_FROM_SDK = 529
# Client JIT, serial GC and a small heap (``FirestoreEmulator.heap_mib``): 30-45 % faster
# start on 2 cores.
_JAVA_FLAGS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Duser.language=en"]


@dataclass(frozen=True)
class EmulatorInstall:
    """A usable Firestore emulator: its jar and the java that runs it."""

    jar: Path
    java: str
    java_version: int


@dataclass(frozen=True)
class EmulatorSearch:
    """Where the emulator was found, or why it cannot run here (one line)."""

    install: EmulatorInstall | None
    reason: str | None


def _sdk_root_of_gcloud() -> Path | None:
    """The Cloud SDK root of the ``gcloud`` on PATH, or None (bounded, never raises)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    root = result.stdout.strip()
    return Path(root) if result.returncode == 0 and root else None


def _find_jar() -> tuple[Path | None, str]:
    """(the jar, "") or (None, where it was looked for)."""
    configured = os.environ.get("FIRESTORE_EMULATOR_JAR", "").strip()
    if configured:
        jar = Path(configured).expanduser()
        return (jar, "") if jar.is_file() else (None, f"FIRESTORE_EMULATOR_JAR={configured}")
    roots: list[Path] = []
    sdk_root = _sdk_root_of_gcloud()
    if sdk_root is not None:
        roots.append(sdk_root)
    roots += [Path(root).expanduser() for root in _USUAL_SDK_ROOTS]
    for root in roots:
        jar = root / _EMULATOR_DIR / _JAR_NAME
        if jar.is_file():
            return jar, ""
    looked = "gcloud's SDK root, " if sdk_root is not None else ""
    return None, looked + "the Debian, Homebrew and ~/google-cloud-sdk install places"


def java_major_version(java: str) -> int | None:
    """17 for ``openjdk version "17.0.15"``, 8 for ``"1.8.0_392"``; None if it does not run."""
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def java_needed(jar: Path) -> int:
    """The Java major version the emulator of ``jar``'s Cloud SDK needs."""
    version_file = jar.parent.parent.parent / "VERSION"  # <sdk root>/VERSION
    try:
        sdk_major = int(version_file.read_text().strip().split(".")[0])
    except (OSError, ValueError):
        return 17  # a jar outside an SDK: the oldest that any current emulator runs on
    return 21 if sdk_major >= _JAVA_21_FROM_SDK else 17


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME", "").strip()
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@functools.cache
def find_firestore_emulator() -> EmulatorSearch:
    """Look for the emulator and a Java that runs it; once per process (``gcloud info``
    takes a second or two)."""
    jar, looked = _find_jar()
    if jar is None:
        return EmulatorSearch(
            None, f"Firestore emulator not installed (looked at {looked}); {INSTALL_HINT}"
        )
    needed = java_needed(jar)
    java = _java()
    if java is None:
        return EmulatorSearch(
            None,
            f"Java not found (the Firestore emulator at {jar} needs Java {needed}+);"
            f" install it with `apt-get install openjdk-{needed}-jre-headless`"
            f" or `brew install openjdk@{needed}`, or set JAVA_HOME",
        )
    version = java_major_version(java)
    if version is None or version < needed:
        found = f"Java {version}" if version else "a java that does not run"
        return EmulatorSearch(
            None,
            f"{found} at {java}, but the Firestore emulator at {jar} needs Java {needed}+;"
            f" install openjdk-{needed} and put it first on PATH (or set JAVA_HOME)",
        )
    return EmulatorSearch(EmulatorInstall(jar, java, version), None)


def firestore_emulator_missing() -> str | None:
    """Why the Firestore emulator cannot run here (one line), or None when it can."""
    return find_firestore_emulator().reason


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, alive: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on ``host:port``; TimeoutError after ``timeout``, or
    at once when the process ``alive`` that should listen there has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if alive is not None and alive.poll() is not None:
                raise TimeoutError(f"it exited with status {alive.returncode}") from None
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
    heap_mib: int = 256
    """The emulator keeps every version of every document in memory (it answered a
    400 KB document's 616th rewrite with OutOfMemoryError at 256 MiB): a run that
    rewrites large documents many times needs more."""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> FirestoreEmulator:
        """Start it and wait for its port; RuntimeError (one line) if it cannot run."""
        install = find_firestore_emulator().install
        if install is None:
            raise RuntimeError(firestore_emulator_missing())
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [
                install.java,
                *_JAVA_FLAGS,
                f"-Xmx{self.heap_mib}m",
                "-cp",
                str(install.jar),
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--websocket_port={free_port()}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout, alive=self.process)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"Firestore emulator ({install.jar}) did not start: {exc}") from None
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
