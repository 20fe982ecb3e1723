"""``make run``: the service on http://127.0.0.1:8080 with everything it needs.

Starts the Firestore emulator (unless FIRESTORE_EMULATOR_HOST points at one), the
offline demo model (unless OPENAI_API_KEY or OPENAI_BASE_URL is set), then
``functions-framework --target=agent_http``. Ctrl-C stops all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .demo_model import DemoModelServer
from .emulators import FirestoreEmulator, free_port

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ)
    env.setdefault("GOOGLE_CLOUD_PROJECT", "demo-local")
    env.setdefault("LOG_LEVEL", "INFO")
    # On a developer's machine; settings refuse "none" where K_SERVICE is set.
    env.setdefault("AUTH_MODE", "none")
    port = env.get("PORT", "8080")
    emulator: FirestoreEmulator | None = None
    model: DemoModelServer | None = None
    try:
        if not env.get("FIRESTORE_EMULATOR_HOST"):
            emulator = FirestoreEmulator(port=int(env.get("FIRESTORE_EMULATOR_PORT", "0"))).start()
            env["FIRESTORE_EMULATOR_HOST"] = emulator.host
            _say(f"Firestore emulator on {emulator.host} (in memory; data is lost on exit)")
        if not env.get("OPENAI_API_KEY") and not env.get("OPENAI_BASE_URL"):
            model = DemoModelServer(port=free_port())
            model.start()
            env["OPENAI_BASE_URL"] = model.base_url
            env["AGENT_MODEL"] = "demo-model"
            _say(
                f"offline DEMO model on {model.base_url} (no OPENAI_API_KEY or OPENAI_BASE_URL"
                " set): deterministic replies, not a real model"
            )
        _say(f"agent service on http://127.0.0.1:{port}  (Ctrl-C stops everything)")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target=agent_http",
                "--host=127.0.0.1",
                f"--port={port}",
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
            return 0
    finally:
        if model is not None:
            model.stop()
        if emulator is not None:
            emulator.stop()
        _say("stopped")


def _say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
