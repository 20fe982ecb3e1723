"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Cloud Logging takes ``severity`` and ``message`` from such a line and keeps the other
keys as the entry's ``jsonPayload``. Fields go in through ``extra={"fields": {...}}``.
Message text and replies are never logged: a conversation can hold anything a user
told the agent.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP client logs every request line at INFO; keep the log about turns.
    for noisy in ("httpx", "httpx2", "openai", "openai.agents"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
