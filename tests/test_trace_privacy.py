"""What the Agents SDK's traces carry (issue 25, item 1): the SDK's own exporter, the one
``TRACING_ENABLED`` uploads to OpenAI with, sends to a loopback stand-in that records
each request body, beside OpenTelemetry's spans in memory. Without ``TRACE_CONTENT`` no
message text leaves through either; the conversation is named by a hash of its id;
``OPENAI_AGENTS_DISABLE_TRACING=true`` wins over ``TRACING_ENABLED``."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agents import set_trace_processors
from agents.tracing import TracingProcessor, get_trace_provider
from agents.tracing.processors import BackendSpanExporter, BatchTraceProcessor
from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from local.demo_model import DemoModelServer

SECRET = "my secret is 42"
TOOL_TURN = f"{SECRET}. What is 12 * (3 + 4)?"  # the demo model calls calculate for it
PRIVATE = (SECRET, "[demo model]", "12 * (3 + 4)", "calculator says")


class IngestStandIn(http.server.ThreadingHTTPServer):
    """Stands in for OpenAI's trace ingest endpoint: keeps every body it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _IngestHandler)
        self.bodies: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces/ingest"

    def items(self) -> list[dict[str, Any]]:
        return [item for body in self.bodies for item in json.loads(body)["data"]]


class _IngestHandler(http.server.BaseHTTPRequestHandler):
    server: IngestStandIn

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body.decode())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _processors() -> tuple[TracingProcessor, ...]:
    # As tests/test_cold_start.py reads them: the SDK has no public getter.
    provider: Any = get_trace_provider()
    return tuple(provider._multi_processor._processors)


@pytest.fixture
def ingest() -> Iterator[IngestStandIn]:
    """The SDK's real exporter and batch processor, pointed at the stand-in instead of
    api.openai.com; the SDK's default processor (which would upload) is taken out, the
    OpenTelemetry bridge kept."""
    server = IngestStandIn()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    processor = BatchTraceProcessor(BackendSpanExporter(api_key="sk-test", endpoint=server.url))
    kept = [p for p in _processors() if not isinstance(p, BatchTraceProcessor)]
    set_trace_processors([*kept, processor])
    yield server
    set_trace_processors([p for p in _processors() if p is not processor])
    processor.shutdown()
    get_trace_provider().set_disabled(True)
    server.shutdown()
    server.server_close()


def sent(ingest: IngestStandIn, spans: InMemorySpanExporter) -> tuple[list[dict[str, Any]], str]:
    """What left through OpenAI's exporter (its items), and everything either exporter
    sent as one text."""
    for processor in _processors():
        processor.force_flush()
    otel_text = json.dumps(
        [dict(s.attributes or {}) for s in spans.get_finished_spans()]
        + [s.name for s in spans.get_finished_spans()]
    )
    return ingest.items(), "\n".join([*ingest.bodies, otel_text])


def test_no_message_text_leaves_through_any_exporter_without_trace_content(
    make_client: Callable[..., FlaskClient], ingest: IngestStandIn, spans: InMemorySpanExporter
) -> None:
    client = make_client(tracing_enabled="true", trace_export="otlp")
    response = client.post("/chat", json={"message": TOOL_TURN})
    assert response.status_code == 200, response.json
    session_id = response.get_json()["session_id"]
    items, text = sent(ingest, spans)
    # The exporters did send: the trace, its model calls and the tool call.
    types = [item.get("span_data", {}).get("type") for item in items]
    assert types.count("generation") == 2 and "function" in types, types
    assert spans.get_finished_spans()
    for private in PRIVATE:
        assert private not in text, private
    (trace,) = [item for item in items if item["object"] == "trace"]
    assert trace["group_id"] == hashlib.sha256(session_id.encode()).hexdigest()
    assert trace["workflow_name"] == "assistant"  # AGENT_NAME
    # OpenAI's backend gets the hash only; the operator's own spans name the session.
    assert session_id not in "\n".join(ingest.bodies)


def test_trace_content_lets_the_text_through(
    make_client: Callable[..., FlaskClient], ingest: IngestStandIn, spans: InMemorySpanExporter
) -> None:
    # The stand-in would see the text if the SDK sent it: the test above can fail.
    client = make_client(tracing_enabled="true", trace_export="otlp", trace_content="true")
    assert client.post("/chat", json={"message": TOOL_TURN}).status_code == 200
    _, text = sent(ingest, spans)
    assert all(private in "\n".join(ingest.bodies) for private in (SECRET, "[demo model]"))
    assert SECRET in text


def test_the_sdks_own_switch_wins_over_tracing_enabled(
    make_client: Callable[..., FlaskClient], ingest: IngestStandIn, spans: InMemorySpanExporter
) -> None:
    client = make_client(tracing_enabled="true", openai_agents_disable_tracing="true")
    assert client.post("/chat", json={"message": TOOL_TURN}).status_code == 200
    items, _ = sent(ingest, spans)
    assert items == []


def test_the_summarisers_runs_carry_no_text_either(
    make_client: Callable[..., FlaskClient],
    model: DemoModelServer,
    ingest: IngestStandIn,
    spans: InMemorySpanExporter,
) -> None:
    model.control(context_tokens=1000)
    client = make_client(tracing_enabled="true", context_max_tokens=1000)
    pad = " and then we talked about the weather, the garden and the sea" * 6
    for turn in range(12):
        body = {"message": f"{SECRET} ({turn}){pad}", "session_id": "long"}
        response = client.post("/chat", json=body)
        assert response.status_code == 200, response.json
        if "summary" in response.get_json()["usage"]:
            break
    else:
        pytest.fail("the history was never summarised")
    items, text = sent(ingest, spans)
    assert SECRET not in text
    workflows = {item["workflow_name"] for item in items if item["object"] == "trace"}
    assert workflows == {"assistant", "summarizer"}
