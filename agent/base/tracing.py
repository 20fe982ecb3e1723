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
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

from werkzeug.datastructures import Headers

from agent.base.logs import IncomingTrace, incoming_trace

if TYPE_CHECKING:
    from agent.base.settings import Settings

Attribute = str | bool | int | float | tuple[str, ...]
Kind = Literal["internal", "server", "client"]


class Span(Protocol):
    def set(self, key: str, value: Attribute | None) -> None:
        """Set an attribute; None is skipped (a value the caller does not have)."""

    def rename(self, name: str) -> None: ...

    def fail(self, description: str) -> None:
        """Mark the span as failed; ``description`` must hold no message text."""

    def end(self) -> None: ...

    def made_current(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, spans started without a parent are this one's children."""


class RequestSpan(Span, Protocol):
    def attach(self) -> None:
        """Make this the current span of the calling thread, until ``detach``."""

    def detach(self) -> None: ...

    def log_fields(self, project: str | None) -> dict[str, object]:
        """Cloud Logging's trace fields naming this span, so log lines and spans meet."""


class Backend(Protocol):
    def start_span(
        self, name: str, parent: Span | None, kind: Kind, attributes: Mapping[str, Attribute]
    ) -> Span: ...

    def start_request(
        self, name: str, incoming: IncomingTrace | None, attributes: Mapping[str, Attribute]
    ) -> RequestSpan: ...

    def flush(self) -> None: ...

    def shutdown(self) -> None: ...


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
