"""The local stack ``make eval`` runs the cases against, started as ``make run`` starts it:
the Firestore emulator (or the SQLite store where it is not installed, or with
``HISTORY_BACKEND=sqlite``), the storage emulator with a results bucket, the offline demo
model unless ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` or ``MODEL_PROVIDER=vertex`` choose
another, and the service itself under functions-framework on a free port."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from local.demo_model import DemoModelServer
from local.emulators import (
    FirestoreEmulator,
    StorageEmulator,
    free_port,
    storage_emulator_missing,
)
from local.server import LiveServer
from local.throwaway_key import new_key


class LocalStack:
    """A context manager: ``url``, and ``demo`` (the demo model, or None for another)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if environ is None else environ)
        self.demo: DemoModelServer | None = None
        self.server: LiveServer | None = None
        self.notes: list[str] = []
        self._stack = ExitStack()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _start(self) -> None:
        env = self.env
        env.setdefault("GOOGLE_CLOUD_PROJECT", "demo-local")
        env.setdefault("AUTH_MODE", "none")
        env.setdefault("LOG_LEVEL", "WARNING")
        work = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="agent-eval-")))
        if env.get("HISTORY_BACKEND") != "sqlite" and not env.get("FIRESTORE_EMULATOR_HOST"):
            try:
                emulator = FirestoreEmulator().start()
                self._stack.callback(emulator.stop)
                env["FIRESTORE_EMULATOR_HOST"] = emulator.host
                env["HISTORY_BACKEND"] = "firestore"
            except RuntimeError as exc:
                self.notes.append(f"{exc}: the SQLite store instead")
                env["HISTORY_BACKEND"] = "sqlite"
        env.setdefault("HISTORY_BACKEND", "firestore")
        if env["HISTORY_BACKEND"] == "sqlite":
            env.setdefault("SQLITE_PATH", str(work / "history.sqlite3"))
        if not env.get("RESULTS_BUCKET"):
            missing = storage_emulator_missing()
            if missing:
                self.notes.append(f"no results bucket: {missing}")
            else:
                storage = StorageEmulator().start()
                self._stack.callback(storage.stop)
                env["STORAGE_EMULATOR_HOST"] = storage.url
                env["RESULTS_BUCKET"] = storage.bucket
                if not env.get("GOOGLE_APPLICATION_CREDENTIALS"):
                    key = new_key().write(work, env["GOOGLE_CLOUD_PROJECT"])
                    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
        chosen = env.get("MODEL_PROVIDER") == "vertex" or any(
            env.get(name) for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
        )
        if not chosen:
            self.demo = DemoModelServer(port=free_port())
            self.demo.start()
            self._stack.callback(self.demo.stop)
            env["OPENAI_BASE_URL"] = self.demo.base_url
            env["AGENT_MODEL"] = "demo-model"
        env.setdefault("OUTBOX_PATH", str(work / "outbox.jsonl"))
        self.server = LiveServer(env)
        self._stack.callback(self.server.stop)

    @property
    def model(self) -> str:
        if self.demo is not None:
            return "the offline demo model"
        return self.env.get("AGENT_MODEL") or "the configured model"
