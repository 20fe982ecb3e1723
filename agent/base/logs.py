"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Cloud Logging takes ``severity`` and ``message`` from such a line and keeps the other
keys as the entry's ``jsonPayload``. Fields go in through ``extra={"fields": {...}}``.
Message text and replies are never logged: a conversation can hold anything a user
told the agent. Neither are tokens or keys.

Every line written while a request is handled also carries that request's fields
(``bind_request``): its id and, when the caller sent ``X-Cloud-Trace-Context`` (or
``traceparent``), the trace as ``logging.googleapis.com/trace``, which makes Cloud
Logging group the request's lines under its trace.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from types import MappingProxyType

from werkzeug.datastructures import Headers

_REQUEST_FIELDS: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "request_fields", default=MappingProxyType({})
)
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([01]))?")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        entry.update(_REQUEST_FIELDS.get())
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


def bind_request(fields: dict[str, object]) -> contextvars.Token[Mapping[str, object]]:
    """Add ``fields`` to every line logged by this thread until ``unbind``."""
    return _REQUEST_FIELDS.set(dict(fields))


def unbind(token: contextvars.Token[Mapping[str, object]]) -> None:
    _REQUEST_FIELDS.reset(token)


def trace_fields(headers: Headers, project: str | None) -> dict[str, object]:
    """Cloud Logging's trace fields from W3C ``traceparent`` or, when that is absent or
    malformed, the legacy ``X-Cloud-Trace-Context`` ("TRACE/SPAN;o=1"); none without a
    project or a well-formed header. ``traceparent`` wins when both arrive: it is the
    standard header, and the one a caller's own tracing sets."""
    if not project:
        return {}
    trace = span = sampled = None
    if match := _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip()):
        trace, span, flags = match.groups()
        sampled = bool(int(flags, 16) & 1)
    elif match := _CLOUD_TRACE.fullmatch((headers.get("X-Cloud-Trace-Context") or "").strip()):
        trace, span_decimal, flag = match.groups()
        span = f"{int(span_decimal):016x}" if span_decimal else None
        sampled = flag == "1" if flag else None
    if trace is None or int(trace, 16) == 0:
        return {}
    fields: dict[str, object] = {
        "logging.googleapis.com/trace": f"projects/{project}/traces/{trace.lower()}"
    }
    if span and int(span, 16) != 0 and len(span) == 16:
        fields["logging.googleapis.com/spanId"] = span
    if sampled is not None:
        fields["logging.googleapis.com/trace_sampled"] = sampled
    return fields
