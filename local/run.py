"""``make run``: the service on http://127.0.0.1:8080 with everything it needs.

Starts the Firestore emulator (unless FIRESTORE_EMULATOR_HOST points at one), the
Cloud Storage emulator with a results bucket (unless RESULTS_BUCKET is set), the
offline demo model (unless OPENAI_API_KEY or OPENAI_BASE_URL is set, or
MODEL_PROVIDER=vertex: then Gemini on Vertex AI as the developer's Application Default
Credentials, from ``gcloud auth application-default login``), then
``functions-framework --target=agent_http``. Ctrl-C stops all of it.

Where no Firestore emulator is installed (or FIRESTORE_EMULATOR_HOST names one that
does not answer), conversations go to the SQLite store instead, in
``.local/history.sqlite3`` (kept across runs), and the banner says so; with
``HISTORY_BACKEND=firestore`` set explicitly, it stops with the reason instead.
``HISTORY_BACKEND=sqlite`` skips the emulator altogether.

Result URLs are signed with a throw-away key made for this run and point at the
storage emulator on 127.0.0.1, so they open in a browser on this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .demo_model import DemoModelServer
from .emulators import (
    FirestoreEmulator,
    StorageEmulator,
    free_port,
    storage_emulator_missing,
    wait_for_port,
)
from .throwaway_key import new_key

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ)
    vertex = env.get("MODEL_PROVIDER") == "vertex"
    if vertex and not env.get("GOOGLE_CLOUD_PROJECT"):
        _say("MODEL_PROVIDER=vertex calls Vertex AI in your project: set GOOGLE_CLOUD_PROJECT")
        return 2
    env.setdefault("GOOGLE_CLOUD_PROJECT", "demo-local")
    env.setdefault("LOG_LEVEL", "INFO")
    # On a developer's machine; settings refuse "none" where K_SERVICE is set.
    env.setdefault("AUTH_MODE", "none")
    port = env.get("PORT", "8080")
    emulator: FirestoreEmulator | None = None
    model: DemoModelServer | None = None
    storage: StorageEmulator | None = None
    key_dir = tempfile.TemporaryDirectory(prefix="agent-run-")
    try:
        emulator, reason = _firestore(env)
        if reason is not None:
            if env.get("HISTORY_BACKEND") == "firestore":  # asked for explicitly
                _say(f"{reason}; HISTORY_BACKEND=firestore, so nothing to run on")
                return 1
            env["HISTORY_BACKEND"] = "sqlite"
            _say(f"{reason}. Falling back to the embedded SQLite store.")
        if env["HISTORY_BACKEND"] == "sqlite":
            env.setdefault("SQLITE_PATH", str(ROOT / ".local" / "history.sqlite3"))
            _say(
                f"history store: SQLite at {env['SQLITE_PATH']} (HISTORY_BACKEND=sqlite:"
                " conversations are kept across runs; Firestore is not used)"
            )
        if not env.get("RESULTS_BUCKET"):
            storage = _start_storage(env, Path(key_dir.name))
        if vertex:
            _say(
                f"model: Gemini on Vertex AI in project {env['GOOGLE_CLOUD_PROJECT']}, as your"
                " Application Default Credentials (gcloud auth application-default login)"
            )
        elif not env.get("OPENAI_API_KEY") and not env.get("OPENAI_BASE_URL"):
            model = DemoModelServer(port=free_port())
            model.start()
            env["OPENAI_BASE_URL"] = model.base_url
            env["AGENT_MODEL"] = "demo-model"
            control = model.base_url.removesuffix("/v1") + "/_control"
            _say(
                f"offline DEMO model on {model.base_url} (no OPENAI_API_KEY or OPENAI_BASE_URL"
                " set): deterministic replies, not a real model; to make its next replies"
                f""" 400 kB: curl -d '{{"reply_bytes": 400000}}' {control}"""
            )
        # .local holds the outbox and the SQLite history (message text): the owner's alone.
        (ROOT / ".local").mkdir(mode=0o700, exist_ok=True)
        (ROOT / ".local").chmod(0o700)
        env.setdefault("OUTBOX_PATH", str(ROOT / ".local" / "outbox.jsonl"))
        Path(env["OUTBOX_PATH"]).parent.mkdir(parents=True, exist_ok=True)
        _say(f"outbox of the send_message tool (it runs only once approved): {env['OUTBOX_PATH']}")
        _say(f"agent service on http://127.0.0.1:{port}  (Ctrl-C stops everything)")
        if env.get("PLAYGROUND_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off"):
            _say(f"chat page: open http://127.0.0.1:{port}/ in a browser")
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
        if storage is not None:
            storage.stop()
        key_dir.cleanup()
        _say("stopped")


def _firestore(env: dict[str, str]) -> tuple[FirestoreEmulator | None, str | None]:
    """Start the Firestore emulator, or use the one at FIRESTORE_EMULATOR_HOST; sets
    HISTORY_BACKEND=firestore in ``env``. (emulator we started or None, why Firestore
    cannot be used or None). Nothing to do with HISTORY_BACKEND=sqlite."""
    if env.get("HISTORY_BACKEND") == "sqlite":
        return None, None
    host = env.get("FIRESTORE_EMULATOR_HOST")
    if host:
        name, _, port = host.rpartition(":")
        try:
            wait_for_port(name, int(port), timeout=2)
        except (TimeoutError, ValueError):
            return None, f"no Firestore emulator answers at FIRESTORE_EMULATOR_HOST={host}"
        env["HISTORY_BACKEND"] = "firestore"
        _say(f"Firestore emulator at {host} (yours)")
        return None, None
    try:
        emulator = FirestoreEmulator(port=int(env.get("FIRESTORE_EMULATOR_PORT", "0"))).start()
    except RuntimeError as exc:  # not installed, or would not start: said in one line
        return None, str(exc)
    env["FIRESTORE_EMULATOR_HOST"] = emulator.host
    env["HISTORY_BACKEND"] = "firestore"
    _say(f"Firestore emulator on {emulator.host} (in memory; data is lost on exit)")
    return emulator, None


def _start_storage(env: dict[str, str], key_dir: Path) -> StorageEmulator | None:
    reason = storage_emulator_missing()
    if reason:
        _say(f"no results bucket: {reason}; large answers stay inline")
        return None
    storage = StorageEmulator().start()
    env["STORAGE_EMULATOR_HOST"] = storage.url
    env["RESULTS_BUCKET"] = storage.bucket
    if not env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        key_file = new_key().write(key_dir, env["GOOGLE_CLOUD_PROJECT"])
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
    _say(
        f"Cloud Storage emulator on {storage.url}, bucket {storage.bucket!r}: answers over"
        f" {env.get('RESULT_INLINE_MAX_BYTES', '262144')} bytes go there, behind signed URLs"
        " (signed with a throw-away key; the emulator checks no signatures)"
    )
    return storage


def _say(text: str) -> None:
    print(f"[make run] {text}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
