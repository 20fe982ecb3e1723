"""The Agents SDK's own traces as OpenTelemetry spans, through its trace-processor
interface, in the request's trace.

The SDK reports each trace and span as it starts and ends, on the run's task; the
run's context holds the request's span (``base/tracing.py``), so the SDK's trace
becomes a child of it, and each SDK span a child of its SDK parent. Model calls
follow OpenTelemetry's GenAI conventions (``gen_ai.operation.name`` ``chat``, the
model, input and output tokens), tool calls are ``execute_tool`` spans. Prompt,
reply and tool text are copied only with ``TRACE_CONTENT=true``.

A hand-written bridge rather than an instrumentation package: the maintained ones
(``opentelemetry-instrumentation-openai-agents``, ``-openai-agents-v2``) decide about
message content from environment variables of their own (one captures it by
default), are each about 2,000 lines with more dependencies, and neither knows SDK
0.24's task and turn spans; this needs the five span types below and ``TRACE_CONTENT``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, TypedDict

from agents import add_trace_processor
from agents.tracing import (
    AgentSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    ResponseSpanData,
    Span,
    Trace,
    TracingProcessor,
)

from agent.base import tracing
from agent.base.settings import Settings

PROVIDERS = {"openai": "openai", "vertex": "gcp.vertex_ai"}
"""``gen_ai.provider.name`` of each MODEL_PROVIDER."""


def uploads_to_openai(settings: Settings) -> bool:
    """Whether the SDK's traces go to OpenAI: ``TRACING_ENABLED``, unless the SDK's own
    ``OPENAI_AGENTS_DISABLE_TRACING`` says no (an operator who set it expects nothing to
    leave, whatever this service's switch says)."""
    return settings.tracing_enabled and not settings.openai_agents_disable_tracing


def sdk_tracing_on(settings: Settings) -> bool:
    """Whether the SDK makes traces at all: for OpenAI's backend or for OpenTelemetry
    (``TRACE_EXPORT``), and never with ``OPENAI_AGENTS_DISABLE_TRACING=true``."""
    if settings.openai_agents_disable_tracing:
        return False
    return settings.tracing_enabled or settings.trace_export != "none"


class RunTracing(TypedDict):
    """The tracing fields of the SDK's ``RunConfig`` for one run (``RunConfig(**...)``)."""

    tracing_disabled: bool
    trace_include_sensitive_data: bool
    workflow_name: str
    group_id: str


def run_tracing(settings: Settings, workflow_name: str, session_id: str) -> RunTracing:
    """What the SDK's trace of a run may carry. Prompts, replies and tool arguments only
    with ``TRACE_CONTENT`` (the SDK's own default is to include them, for every exporter,
    OpenAI's included); the conversation as a SHA-256 of its id, which groups its turns
    without handing the id (a bearer of the conversation for its owner) to a backend."""
    return RunTracing(
        tracing_disabled=not sdk_tracing_on(settings),
        trace_include_sensitive_data=settings.trace_content,
        workflow_name=workflow_name,
        group_id=conversation_hash(session_id),
    )


def conversation_hash(session_id: str) -> str:
    """The SHA-256 hex digest of a session id: the conversation's name in traces."""
    return hashlib.sha256(session_id.encode()).hexdigest()


_installed: OpenTelemetryBridge | None = None
_install_lock = threading.Lock()


def install(model_provider: str) -> None:
    """Register the bridge with the SDK's trace provider, once per process."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OpenTelemetryBridge()
            add_trace_processor(_installed)
        _installed.provider = PROVIDERS.get(model_provider, model_provider)


class OpenTelemetryBridge(TracingProcessor):
    """Mirrors the SDK's traces and spans as spans of ``base/tracing.py``."""

    def __init__(self) -> None:
        self.provider = "openai"
        """``gen_ai.provider.name`` of the model's spans."""
        self._lock = threading.Lock()
        self._open: dict[str, tracing.Span] = {}  # by SDK trace or span id

    def on_trace_start(self, trace: Trace) -> None:
        started = tracing.start_span(trace.name)  # under the current (request) span
        with self._lock:
            self._open[trace.trace_id] = started

    def on_trace_end(self, trace: Trace) -> None:
        with self._lock:
            ended = self._open.pop(trace.trace_id, None)
        if ended is not None:
            ended.end()

    def on_span_start(self, span: Span[Any]) -> None:
        with self._lock:
            parent = self._open.get(span.parent_id or span.trace_id)
        started = tracing.start_span(f"agents.{span.span_data.type}", parent)
        with self._lock:
            self._open[span.span_id] = started

    def on_span_end(self, span: Span[Any]) -> None:
        with self._lock:
            ended = self._open.pop(span.span_id, None)
        if ended is None:
            return
        self._describe(ended, span.span_data)
        if span.error:
            # The SDK's own words ("Max turns exceeded"); its ``data`` may quote input.
            ended.fail(str(span.error.get("message", "error")))
        ended.end()

    def _describe(self, out: tracing.Span, data: Any) -> None:
        content = tracing.content()
        if isinstance(data, GenerationSpanData | ResponseSpanData):
            response = getattr(data, "response", None)
            model = getattr(data, "model", None) or getattr(response, "model", None)
            out.rename(f"chat {model}" if model else "chat")
            out.set("gen_ai.operation.name", "chat")
            out.set("gen_ai.provider.name", self.provider)
            out.set("gen_ai.request.model", model)
            usage = data.usage or {}
            out.set("gen_ai.usage.input_tokens", usage.get("input_tokens"))
            out.set("gen_ai.usage.output_tokens", usage.get("output_tokens"))
            if content:
                out.set("gen_ai.input.messages", _json(data.input))
                output = data.output if isinstance(data, GenerationSpanData) else response
                out.set("gen_ai.output.messages", _json(output))
        elif isinstance(data, FunctionSpanData):
            out.rename(f"execute_tool {data.name}")
            out.set("gen_ai.operation.name", "execute_tool")
            out.set("gen_ai.tool.name", data.name)
            out.set("gen_ai.tool.type", "function")
            if content:
                out.set("gen_ai.tool.call.arguments", data.input)
                out.set("gen_ai.tool.call.result", _json(data.output))
        elif isinstance(data, AgentSpanData):
            out.rename(f"invoke_agent {data.name}")
            out.set("gen_ai.operation.name", "invoke_agent")
            out.set("gen_ai.agent.name", data.name)
        elif isinstance(data, HandoffSpanData):
            out.set("agents.handoff.from", data.from_agent)
            out.set("agents.handoff.to", data.to_agent)
        elif isinstance(data, GuardrailSpanData):
            out.rename(f"guardrail {data.name}")
            out.set("agents.guardrail.triggered", data.triggered)

    def shutdown(self) -> None:
        pass  # the spans' exporter belongs to base/tracing.py

    def force_flush(self) -> None:
        pass


def _json(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return json.dumps(value, default=str)
