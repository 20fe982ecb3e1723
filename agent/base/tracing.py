"""Spans of each request, for Cloud Trace or any OTLP backend: a small facade over
OpenTelemetry that every layer may call, and that does nothing until ``configure``
turns export on.

With ``TRACE_EXPORT=none`` (the default) the OpenTelemetry SDK and its exporters are
never imported (``otel.py`` is loaded by ``configure`` only), so the cold start does
not change; every call here returns a shared no-op at the cost of a function call.

The current span travels in a context variable: the request's thread sets it, and
the background event loop runs each coroutine in a copy of the submitting thread's
context (``runtime/event_loop.py``), so spans made during the agent run land under
the request's span.

Message text never goes into a span unless ``TRACE_CONTENT=true`` (``content()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from werkzeug.datastructures import Headers

from agent.base.logs import incoming_trace

# The shapes live apart so that ``otel.py`` needs them, not this module; named here too,
# as every caller knows them (``tracing.Span``).
from agent.base.span_types import Attribute as Attribute
from agent.base.span_types import Backend
from agent.base.span_types import Kind as Kind
from agent.base.span_types import RequestSpan as RequestSpan
from agent.base.span_types import Span as Span

if TYPE_CHECKING:
    from agent.base.settings import Settings


class _NoSpan:
    def set(self, key: str, value: Attribute | None) -> None:
        pass

    def rename(self, name: str) -> None:
        pass

    def fail(self, description: str) -> None:
        pass

    def end(self) -> None:
        pass

    def made_current(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def attach(self) -> None:
        pass

    def detach(self) -> None:
        pass

    def log_fields(self, project: str | None) -> dict[str, object]:
        return {}


NO_SPAN = _NoSpan()
_backend: Backend | None = None
_content = False


def configure(settings: Settings) -> None:
    """Turn export on or off for the process, as ``settings`` say (at startup)."""
    global _backend, _content
    _content = settings.trace_export != "none" and settings.trace_content
    if _backend is not None:  # configured before (tests build several services)
        _backend.shutdown()
    if settings.trace_export == "none":
        _backend = None
        return
    from agent.base import otel  # the OpenTelemetry SDK: only when spans are exported

    _backend = otel.OtelBackend(settings)


def exporting() -> bool:
    return _backend is not None


def content() -> bool:
    """Whether spans may carry prompt, reply and tool text (``TRACE_CONTENT``)."""
    return _content


@contextlib.contextmanager
def span(name: str, **attributes: Attribute) -> Iterator[Span]:
    """A span around the block, child of the current span and current within it; an
    exception leaving the block marks it failed with the exception's type only."""
    if _backend is None:
        yield NO_SPAN
        return
    current = _backend.start_span(name, None, "internal", attributes)
    with current.made_current():
        try:
            yield current
        except BaseException as exc:
            current.fail(type(exc).__name__)
            raise
        finally:
            current.end()


def start_span(
    name: str, parent: Span | None = None, kind: Kind = "internal", **attributes: Attribute
) -> Span:
    """A span ended by the caller and never made current: a child of ``parent``, or
    without one of the current span (for callbacks that open and close spans on
    different calls, like the Agents SDK's trace processor)."""
    if _backend is None:
        return NO_SPAN
    return _backend.start_span(name, parent, kind, attributes)


def start_request(name: str, headers: Headers, **attributes: Attribute) -> RequestSpan:
    """The span of one HTTP request, parented on its ``traceparent`` (or
    ``X-Cloud-Trace-Context``) when it arrived in a trace."""
    if _backend is None:
        return NO_SPAN
    return _backend.start_request(name, incoming_trace(headers), attributes)


def flush() -> None:
    """Export the finished spans now, within ``TRACE_FLUSH_SECONDS``: called before a
    response completes, as the CPU is throttled after it (``otel.py``)."""
    if _backend is not None:
        _backend.flush()
