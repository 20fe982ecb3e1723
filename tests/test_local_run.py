"""``make run`` on a machine without the Firestore emulator (``FIRESTORE_EMULATOR_JAR``
pointing nowhere, and neither gcloud nor java on PATH): it starts on the SQLite store and
says so in its banner, names the page, remembers a two-turn conversation, refuses a
concurrent turn with 409, and stops on Ctrl-C without a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from local.emulators import free_port, wait_for_port
from local.server import LiveServer
from tests.support.constants import REPO_ROOT


def start_bare_run(tmp_path: Path, port: int, data: Path) -> subprocess.Popen[str]:
    python_only = tmp_path / "bin"
    python_only.mkdir()
    (python_only / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIRESTORE_", "OPENAI_"))}
    for name in ("HISTORY_BACKEND", "JAVA_HOME", "RESULTS_BUCKET"):
        env.pop(name, None)
    env |= {
        "PATH": str(python_only),  # no gcloud, no java
        "FIRESTORE_EMULATOR_JAR": "/nonexistent",
        "PORT": str(port),
        "SQLITE_PATH": str(data),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "local.run"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_make_run_falls_back_to_sqlite_and_works(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data" / "history.sqlite3"
    process = start_bare_run(tmp_path, port, data)
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")))
    reader.start()
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        server = LiveServer.__new__(LiveServer)  # only its call(), against make run's server
        server.port = port
        status, first, _ = server.call("POST", "/chat", {"message": "My name is Ada. 2+3?"})
        assert status == 200 and first["reply"] == "[demo model] The calculator says: 5."
        session = first["session_id"]
        status, second, _ = server.call("POST", "/chat", {"message": "Hi", "session_id": session})
        assert status == 200 and 'first message was: "My name is Ada.' in second["reply"]
        assert data.is_file()

        # Two concurrent turns on one session: the demo model is slowed to hold the first.
        (control,) = re.findall(r"(http://\S+/_control)", "".join(lines))
        body = json.dumps({"delay_seconds": 1.5}).encode()
        urllib.request.urlopen(control, data=body, timeout=10).close()
        statuses: list[int] = []
        slow = threading.Thread(
            target=lambda: statuses.append(
                server.call("POST", "/chat", {"message": "slow", "session_id": session})[0]
            )
        )
        slow.start()
        time.sleep(0.5)
        statuses.append(server.call("POST", "/chat", {"message": "b", "session_id": session})[0])
        slow.join()
        assert sorted(statuses) == [200, 409]
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        process.wait(timeout=30)
        reader.join(timeout=10)
    banner = "".join(lines)
    assert process.returncode == 0, banner
    assert "Firestore emulator not installed" in banner and "Falling back" in banner
    assert f"history store: SQLite at {data}" in banner
    assert f"chat page: open http://127.0.0.1:{port}/" in banner
    assert "Traceback" not in banner
