"""Model-call spans by OpenTelemetry's GenAI semantic conventions (issue 25 item 4):
chat spans are CLIENT spans naming the request's model and the response's own model, id
and finish reasons, the cache-read tokens and the conversation; a failed call carries
``error.type``. The demo model answers an alias as a dated snapshot, as OpenAI does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from agents.tracing import ResponseSpanData
from flask.testing import FlaskClient
from openai.types.responses import Response
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agent.base import tracing
from agent.base.settings import Settings
from agent.runtime.otel_bridge import OpenTelemetryBridge
from local.demo_model import LATEST_ALIAS, SNAPSHOT, DemoModelServer
from tests.support.sse_client import parse_body

TOOL_TURN = "What is 12 * (3 + 4)?"  # the demo model calls calculate, then answers


@pytest.fixture
def traced(make_client: Callable[..., FlaskClient], spans: InMemorySpanExporter) -> FlaskClient:
    return make_client(trace_export="otlp", agent_model=LATEST_ALIAS)


def chat_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def check_calls(calls: list[ReadableSpan], session_id: str) -> None:
    assert len(calls) == 2  # the tool call, then the answer
    reasons = []
    for call in calls:
        found = attributes(call)
        assert call.kind == SpanKind.CLIENT
        assert call.name == f"chat {LATEST_ALIAS}"
        assert found["gen_ai.request.model"] == LATEST_ALIAS
        assert found["gen_ai.response.model"] == SNAPSHOT  # what answered, not what was asked
        assert str(found["gen_ai.response.id"]).startswith("chatcmpl-demo")
        assert found["gen_ai.usage.cache_read.input_tokens"] == 0  # the demo caches nothing
        assert found["gen_ai.conversation.id"] == session_id
        reasons.append(tuple(found["gen_ai.response.finish_reasons"]))
    assert reasons == [("tool_calls",), ("stop",)]


def test_a_turns_chat_spans_follow_the_genai_conventions(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    response = traced.post("/chat", json={"message": TOOL_TURN})
    assert response.status_code == 200, response.json
    session_id = response.get_json()["session_id"]
    check_calls(chat_spans(spans), session_id)
    found = spans.get_finished_spans()
    (agent,) = [s for s in found if s.name == "invoke_agent assistant"]
    assert attributes(agent)["gen_ai.conversation.id"] == session_id
    (tool,) = [s for s in found if s.name == "execute_tool calculate"]
    assert tool.kind == SpanKind.INTERNAL


def test_a_streamed_turns_chat_spans_say_the_same(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    response = traced.post("/chat", json={"message": TOOL_TURN, "stream": True})
    (done,) = [e for e in parse_body(response.get_data()) if e.name == "done"]
    check_calls(chat_spans(spans), done.data["session_id"])


def test_a_failed_call_names_its_error_type(
    traced: FlaskClient, spans: InMemorySpanExporter, model: DemoModelServer
) -> None:
    model.control(fail_status=500)
    response = traced.post("/chat", json={"message": "hello"})
    assert response.status_code >= 500
    (call,) = chat_spans(spans)
    assert call.status.status_code == StatusCode.ERROR
    assert attributes(call)["error.type"] == "InternalServerError"
    assert "Simulated failure" not in str(attributes(call))  # the type, never the text


@dataclass
class SdkSpan:
    """The fields of an SDK span the bridge reads, for the Responses API's span, which
    the demo model (Chat Completions only) cannot produce."""

    span_data: Any
    span_id: str = "span_1"
    trace_id: str = "trace_1"
    parent_id: str | None = None
    error: dict[str, Any] | None = None


@pytest.mark.parametrize(
    ("status", "output", "incomplete", "reasons"),
    [
        ("completed", [{"type": "function_call"}], None, ("tool_calls",)),
        ("completed", [{"type": "message"}], None, ("stop",)),
        ("incomplete", [], {"reason": "max_output_tokens"}, ("length",)),
        ("incomplete", [], {"reason": "content_filter"}, ("content_filter",)),
    ],
)
def test_a_responses_api_call_is_described_from_its_response(
    spans: InMemorySpanExporter,
    status: str,
    output: list[dict[str, str]],
    incomplete: dict[str, str] | None,
    reasons: tuple[str, ...],
) -> None:
    tracing.configure(Settings(trace_export="otlp"))
    answered = Response.model_construct(
        id="resp_1",
        model="gpt-4o-mini-2024-07-18",
        status=status,
        output=[SimpleNamespace(**item) for item in output],
        incomplete_details=SimpleNamespace(**incomplete) if incomplete else None,
    )
    usage = {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 8}}
    call = SdkSpan(ResponseSpanData(response=answered, usage=usage))
    bridge = OpenTelemetryBridge()
    bridge.on_span_start(call)  # type: ignore[arg-type]
    bridge.on_span_end(call)  # type: ignore[arg-type]
    tracing.flush()
    (span,) = spans.get_finished_spans()
    found = attributes(span)
    assert span.kind == SpanKind.CLIENT
    assert found["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert found["gen_ai.response.id"] == "resp_1"
    assert tuple(found["gen_ai.response.finish_reasons"]) == reasons
    assert found["gen_ai.usage.cache_read.input_tokens"] == 8
