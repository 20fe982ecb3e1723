"""Structured logs: one JSON object per line on stdout, as Cloud Logging reads them.

Cloud Logging takes ``severity`` and ``message`` from such a line and keeps the other
keys as the entry's ``jsonPayload``. Fields go in through ``extra={"fields": {...}}``.
Message text and replies are never logged: a conversation can hold anything a user
told the agent. Neither are tokens or keys.

Every line written while a request is handled also carries that request's fields
(``bind_request``): its id and, when the caller sent ``traceparent`` (or
``X-Cloud-Trace-Context``), the trace as ``logging.googleapis.com/trace``, which makes Cloud
Logging group the request's lines under its trace. With ``TRACE_EXPORT`` on, the trace
and span are the request span's (``tracing.py``), header or not.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
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


HANDLER_NAME = "agent-cloud-function"
"""The name of the one handler ``configure_logging`` adds to the root logger."""


def configure_logging(level: str) -> None:
    """JSON lines on stdout through one named root handler, added once (called again, it
    keeps that one). The root's other handlers stay: a host application's, or pytest's,
    are theirs, and replacing them would silence the host's own logging."""
    root = logging.getLogger()
    if not any(h.get_name() == HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    # The HTTP client logs every request line at INFO; keep the log about turns.
    for noisy in ("httpx", "httpx2", "openai", "openai.agents"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def bind_request(fields: dict[str, object]) -> contextvars.Token[Mapping[str, object]]:
    """Add ``fields`` to every line logged by this thread until ``unbind``."""
    return _REQUEST_FIELDS.set(dict(fields))


def unbind(token: contextvars.Token[Mapping[str, object]]) -> None:
    _REQUEST_FIELDS.reset(token)


@dataclass(frozen=True)
class IncomingTrace:
    """The trace a request arrived in: 32 hex digits, its parent span (16 hex digits,
    or None) and whether the caller sampled it (None: it did not say)."""

    trace_id: str
    span_id: str | None
    sampled: bool | None


def incoming_trace(headers: Headers) -> IncomingTrace | None:
    """The W3C ``traceparent``, else ``X-Cloud-Trace-Context`` ("TRACE/SPAN;o=1"); the
    standard header wins when both arrive. None when neither is well-formed."""
    trace = span = None
    sampled: bool | None = None
    if match := _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip()):
        trace, span, flags = match.groups()
        sampled = bool(int(flags, 16) & 1)
    elif match := _CLOUD_TRACE.fullmatch((headers.get("X-Cloud-Trace-Context") or "").strip()):
        trace, span_decimal, flag = match.groups()
        span = f"{int(span_decimal):016x}" if span_decimal else None
        sampled = flag == "1" if flag else None
    if trace is None or int(trace, 16) == 0:
        return None
    if span is not None and (len(span) != 16 or int(span, 16) == 0):
        span = None
    return IncomingTrace(trace.lower(), span, sampled)


def trace_fields(headers: Headers, project: str | None) -> dict[str, object]:
    """Cloud Logging's trace fields from the request's trace headers (``incoming_trace``);
    none without a project or a well-formed header."""
    trace = incoming_trace(headers)
    if trace is None:
        return {}
    return cloud_logging_trace(project, trace.trace_id, trace.span_id, trace.sampled)


def cloud_logging_trace(
    project: str | None, trace_id: str, span_id: str | None, sampled: bool | None
) -> dict[str, object]:
    """The fields that make Cloud Logging file a line under a trace (and span)."""
    if not project:
        return {}
    fields: dict[str, object] = {
        "logging.googleapis.com/trace": f"projects/{project}/traces/{trace_id}"
    }
    if span_id is not None:
        fields["logging.googleapis.com/spanId"] = span_id
    if sampled is not None:
        fields["logging.googleapis.com/trace_sampled"] = sampled
    return fields
