"""What a span and a tracing backend are: the shapes ``tracing.py`` (the facade every
layer calls) and ``otel.py`` (the OpenTelemetry backend behind it) both speak.

A module of their own so that neither of the two imports the other for them:
``tracing.py`` loads ``otel.py`` only when spans are exported, and ``otel.py`` needs
these shapes, not the facade.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Literal, Protocol

from agent.base.logs import IncomingTrace

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
