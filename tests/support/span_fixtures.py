"""The ``spans`` fixture: every span a service built with ``TRACE_EXPORT`` on exports,
kept in memory instead of sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.base import otel, tracing
from agent.base.settings import Settings


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Every exported span, in memory, for services built with TRACE_EXPORT on."""
    memory = InMemorySpanExporter()
    monkeypatch.setattr(otel, "build_exporter", lambda settings: memory)
    yield memory
    tracing.configure(Settings())  # export off again for the tests that follow
