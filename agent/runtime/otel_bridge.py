"""The Agents SDK's traces as OpenTelemetry spans, through its trace-processor interface,
in the request's trace (loaded and ``install``-ed by ``model.py`` only with ``TRACE_EXPORT`` on).

The SDK reports each trace and span as it starts and ends, on the run's task; the
run's context holds the request's span (``base/tracing.py``), so the SDK's trace
becomes a child of it, and each SDK span a child of its SDK parent. Model calls
follow OpenTelemetry's GenAI conventions, with the constants of the semantic-conventions
package: ``chat`` spans of kind CLIENT with the request's model, the response's model,
id and finish reasons, input, output and cache-read tokens, the conversation, and
``error.type`` on failure; tool calls are ``execute_tool`` spans. Prompt, reply and tool
text are copied only with ``TRACE_CONTENT=true``.

A hand-written bridge rather than an instrumentation package: the maintained ones
(``opentelemetry-instrumentation-openai-agents``, ``-openai-agents-v2``) decide about
message content from environment variables of their own (one captures it by
default), are each about 2,000 lines with more dependencies, and neither knows SDK
0.24's task and turn spans; this needs the five span types below and ``TRACE_CONTENT``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

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
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE, ErrorTypeValues

from agent.base import tracing
from agent.runtime import sdk_traces
from agent.runtime.sdk_traces import CallFacts


class OpenTelemetryBridge(TracingProcessor):
    """Mirrors the SDK's traces and spans as spans of ``base/tracing.py``."""

    def __init__(self) -> None:
        self.provider = "openai"
        """``gen_ai.provider.name`` of the model's spans."""
        self._lock = threading.Lock()
        self._open: dict[str, tracing.Span] = {}  # by SDK trace or span id

    def on_trace_start(self, trace: Trace) -> None:
        started = tracing.start_span(trace.name)  # under the current (request) span
        started.set(gen_ai.GEN_AI_CONVERSATION_ID, sdk_traces.CONVERSATION.get())
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
        model_call = isinstance(span.span_data, GenerationSpanData | ResponseSpanData)
        started = tracing.start_span(
            f"agents.{span.span_data.type}", parent, "client" if model_call else "internal"
        )
        with self._lock:
            self._open[span.span_id] = started

    def on_span_end(self, span: Span[Any]) -> None:
        facts = sdk_traces.call_ended(span.span_id) or CallFacts()
        with self._lock:
            ended = self._open.pop(span.span_id, None)
        if ended is None:
            return
        self._describe(ended, span.span_data, facts)
        if span.error:
            # The SDK's own words ("Max turns exceeded"); its ``data`` may quote input.
            ended.fail(str(span.error.get("message", "error")))
            ended.set(ERROR_TYPE, facts.error_type or ErrorTypeValues.OTHER.value)
        ended.end()

    def _describe(self, out: tracing.Span, data: Any, facts: CallFacts) -> None:
        content = tracing.content()
        if isinstance(data, GenerationSpanData | ResponseSpanData):
            self._describe_call(out, data, facts)
            if content:
                out.set(gen_ai.GEN_AI_INPUT_MESSAGES, _json(data.input))
                output = data.output if isinstance(data, GenerationSpanData) else data.response
                out.set(gen_ai.GEN_AI_OUTPUT_MESSAGES, _json(output))
        elif isinstance(data, FunctionSpanData):
            out.rename(f"execute_tool {data.name}")
            out.set(gen_ai.GEN_AI_OPERATION_NAME, "execute_tool")
            out.set(gen_ai.GEN_AI_TOOL_NAME, data.name)
            out.set(gen_ai.GEN_AI_TOOL_TYPE, "function")
            if content:
                out.set(gen_ai.GEN_AI_TOOL_CALL_ARGUMENTS, data.input)
                out.set(gen_ai.GEN_AI_TOOL_CALL_RESULT, _json(data.output))
        elif isinstance(data, AgentSpanData):
            out.rename(f"invoke_agent {data.name}")
            out.set(gen_ai.GEN_AI_OPERATION_NAME, "invoke_agent")
            out.set(gen_ai.GEN_AI_AGENT_NAME, data.name)
            out.set(gen_ai.GEN_AI_PROVIDER_NAME, self.provider)
            out.set(gen_ai.GEN_AI_CONVERSATION_ID, sdk_traces.CONVERSATION.get())
        elif isinstance(data, HandoffSpanData):
            out.set("agents.handoff.from", data.from_agent)
            out.set("agents.handoff.to", data.to_agent)
        elif isinstance(data, GuardrailSpanData):
            out.rename(f"guardrail {data.name}")
            out.set("agents.guardrail.triggered", data.triggered)

    def _describe_call(
        self, out: tracing.Span, data: GenerationSpanData | ResponseSpanData, facts: CallFacts
    ) -> None:
        """A model call: what was asked for, and what the response said it was."""
        response = getattr(data, "response", None)  # the Responses API's whole response
        requested = getattr(data, "model", None) or getattr(response, "model", None)
        out.rename(f"chat {requested}" if requested else "chat")
        out.set(gen_ai.GEN_AI_OPERATION_NAME, "chat")
        out.set(gen_ai.GEN_AI_PROVIDER_NAME, self.provider)
        out.set(gen_ai.GEN_AI_REQUEST_MODEL, requested)
        out.set(gen_ai.GEN_AI_CONVERSATION_ID, sdk_traces.CONVERSATION.get())
        if response is not None:
            facts.response_model = facts.response_model or response.model
            facts.response_id = facts.response_id or response.id
            facts.finish_reasons = facts.finish_reasons or _finish_reasons(response)
        out.set(gen_ai.GEN_AI_RESPONSE_MODEL, facts.response_model)
        out.set(gen_ai.GEN_AI_RESPONSE_ID, facts.response_id)
        if facts.finish_reasons:
            out.set(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, tuple(facts.finish_reasons))
        usage = data.usage or {}
        out.set(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, usage.get("input_tokens"))
        out.set(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, usage.get("output_tokens"))
        details = usage.get("input_tokens_details") or {}
        out.set(gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, details.get("cached_tokens"))

    def shutdown(self) -> None:
        pass  # the spans' exporter belongs to base/tracing.py

    def force_flush(self) -> None:
        pass


def _finish_reasons(response: Any) -> list[str]:
    """The Responses API has a status, not finish reasons: the Chat Completions words
    for it, as the conventions use them."""
    if response.status == "incomplete":
        reason = getattr(response.incomplete_details, "reason", None)
        return ["length" if reason == "max_output_tokens" else str(reason or "incomplete")]
    if response.status != "completed":
        return []
    calls = any(getattr(item, "type", "") == "function_call" for item in response.output)
    return ["tool_calls" if calls else "stop"]


def _json(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return json.dumps(value, default=str)


_installed: OpenTelemetryBridge | None = None
_install_lock = threading.Lock()


def install(model_provider: str) -> None:
    """Register the bridge with the SDK's trace provider, once per process."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OpenTelemetryBridge()
            add_trace_processor(_installed)
            sdk_traces.note_calls()
        _installed.provider = sdk_traces.PROVIDERS.get(model_provider, model_provider)
