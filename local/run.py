"""``make run``: the service on http://127.0.0.1:8080 with everything it needs.

Starts the Firestore emulator (unless FIRESTORE_EMULATOR_HOST points at one), the
Cloud Storage emulator with a results bucket (unless RESULTS_BUCKET is set), the
offline demo model (unless OPENAI_API_KEY or OPENAI_BASE_URL is set, or
MODEL_PROVIDER=vertex: then Gemini on Vertex AI as the developer's Application Default
Credentials, from ``gcloud auth application-default login``), then
``functions-framework --target=agent_http``. Ctrl-C stops all of it.

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
from .emulators import FirestoreEmulator, StorageEmulator, free_port, storage_emulator_missing
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
        if not env.get("FIRESTORE_EMULATOR_HOST"):
            try:
                emulator = FirestoreEmulator(
                    port=int(env.get("FIRESTORE_EMULATOR_PORT", "0"))
                ).start()
            except RuntimeError as exc:  # not installed, or would not start: said in one line
                _say(str(exc))
                return 1
            env["FIRESTORE_EMULATOR_HOST"] = emulator.host
            _say(f"Firestore emulator on {emulator.host} (in memory; data is lost on exit)")
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
