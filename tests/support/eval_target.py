"""The service the deploy tests' eval gate runs against: what "the staging function" is
when the pipeline runs against the fake gcloud (``FAKE_GCLOUD_FUNCTION_URL``).

One per test process, started on first use and stopped at exit: the service under
functions-framework on the SQLite store with the demo model, as deployed but on loopback.
``instructions`` gives another one whose agent is told not to use tools: the gate must
fail on it."""

from __future__ import annotations

import atexit
import os
import tempfile

from local.demo_model import DemoModelServer
from local.server import LiveServer

_servers: dict[str, LiveServer] = {}
_model: DemoModelServer | None = None

NO_TOOLS = "You are a concise assistant. Do not use tools."
"""Instructions the demo model follows by calling no tool (local/demo_model.py)."""


def staging_url(instructions: str | None = None) -> str:
    global _model
    key = instructions or ""
    if key not in _servers:
        if _model is None:
            _model = DemoModelServer()
            _model.start()
            atexit.register(_model.stop)
        work = tempfile.mkdtemp(prefix="eval-target-")
        env = dict(os.environ) | {
            "HISTORY_BACKEND": "sqlite",
            "SQLITE_PATH": os.path.join(work, "history.sqlite3"),
            "GOOGLE_CLOUD_PROJECT": "eval-target",
            "OPENAI_BASE_URL": _model.base_url,
            "AGENT_MODEL": "demo-model",
            "AUTH_MODE": "none",
            "OUTBOX_PATH": os.path.join(work, "outbox.jsonl"),
        }
        for name in ("OPENAI_API_KEY", "MODEL_PROVIDER", "FIRESTORE_EMULATOR_HOST"):
            env.pop(name, None)
        env.pop("RESULTS_BUCKET", None)
        if instructions is not None:
            env["AGENT_INSTRUCTIONS"] = instructions
        server = LiveServer(env)
        atexit.register(server.stop)
        _servers[key] = server
    return _servers[key].url
