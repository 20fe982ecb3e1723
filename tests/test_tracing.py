"""OpenTelemetry traces (TRACE_EXPORT): the span tree of a turn, its parent trace from
the caller's headers, no message text unless TRACE_CONTENT=true, log lines in the same
trace, and spans reaching a loopback OTLP/HTTP receiver from a real server process."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.base.logs import JsonFormatter
from agent.base.settings import Settings, SettingsError
from local.demo_model import DemoModelServer
from local.server import LiveServer
from local.throwaway_key import new_key
from tests.support.constants import PROJECT, service_account_email
from tests.support.google_metadata_and_iam import Standin
from tests.support.otlp_receiver import OtlpReceiver, serving
from tests.support.storage_fixtures import StorageEmulator

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
SECRET = "my secret is 42"
TOOL_TURN = f"{SECRET}. What is 12 * (3 + 4)?"  # the demo model calls calculate for it


@pytest.fixture
def traced(make_client: Callable[..., FlaskClient], spans: InMemorySpanExporter) -> FlaskClient:
    return make_client(trace_export="otlp")


def by_name(found: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, [s.name for s in found]
    return matching[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ancestors(span: ReadableSpan, found: tuple[ReadableSpan, ...]) -> list[str]:
    """Names from ``span``'s parent up to the root, within ``found``."""
    index = {s.context.span_id: s for s in found}
    names, parent = [], parent_of(span)
    while parent in index:
        names.append(index[parent].name)
        parent = parent_of(index[parent])
    return names


def attribute_text(found: tuple[ReadableSpan, ...]) -> str:
    return json.dumps([dict(s.attributes or {}) for s in found] + [s.name for s in found])


def test_a_turn_is_one_tree_under_the_callers_traceparent(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    response = traced.post(
        "/chat", json={"message": TOOL_TURN}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200, response.json
    found = tuple(s for s in spans.get_finished_spans() if s.context.trace_id == int(TRACE, 16))
    request = by_name(found, "POST /chat")
    assert parent_of(request) == int(PARENT, 16)
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    for name in ("claim", "commit", "assistant"):  # the SDK's trace, named after the agent
        assert ancestors(by_name(found, name), found) == ["POST /chat"], name
    calls = [s for s in found if s.name == "chat demo-model"]
    assert len(calls) == 2  # the tool call, then the answer
    for call in calls:
        assert "POST /chat" in ancestors(call, found)
        attributes = call.attributes or {}
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.model"] == "demo-model"
        assert attributes["gen_ai.provider.name"] == "openai"
        assert int(str(attributes["gen_ai.usage.input_tokens"])) > 0
        assert int(str(attributes["gen_ai.usage.output_tokens"])) > 0
    tool = by_name(found, "execute_tool calculate")
    assert (tool.attributes or {})["gen_ai.tool.name"] == "calculate"
    assert "POST /chat" in ancestors(tool, found)
    # No prompt, reply or tool text without TRACE_CONTENT.
    text = attribute_text(tuple(spans.get_finished_spans()))
    for private in (SECRET, "[demo model]", "12 * (3 + 4)", '"84"', "calculator says"):
        assert private not in text


def test_the_first_request_without_traceparent_is_not_in_the_callers_trace(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    traced.get("/healthz")
    (only,) = spans.get_finished_spans()
    assert only.name == "GET /healthz" and only.parent is None


def test_x_cloud_trace_context_parents_the_request_and_traceparent_wins(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    other = "0af7651916cd43dd8448eb211c80319c"
    traced.get("/healthz", headers={"X-Cloud-Trace-Context": f"{TRACE}/17;o=1"})
    traced.get(
        "/healthz",
        headers={"X-Cloud-Trace-Context": f"{other}/17;o=1", "traceparent": TRACEPARENT},
    )
    cloud, both = spans.get_finished_spans()
    assert (cloud.context.trace_id, parent_of(cloud)) == (int(TRACE, 16), 17)
    assert (both.context.trace_id, parent_of(both)) == (int(TRACE, 16), int(PARENT, 16))


def test_trace_content_puts_the_text_in_the_spans(
    make_client: Callable[..., FlaskClient], spans: InMemorySpanExporter
) -> None:
    client = make_client(trace_export="otlp", trace_content="true")
    assert client.post("/chat", json={"message": TOOL_TURN}).status_code == 200
    text = attribute_text(tuple(spans.get_finished_spans()))
    assert SECRET in text and "[demo model]" in text and "12 * (3 + 4)" in text


def test_offload_and_signing_are_spans_of_the_turn(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
    spans: InMemorySpanExporter,
) -> None:
    client = make_client(**results_env, trace_export="otlp", result_inline_max_bytes=8192)
    model.control(reply_bytes=20_000)
    response = client.post("/chat", json={"message": "long"}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200 and "result" in response.json
    found = spans.get_finished_spans()
    for name in ("offload", "sign"):
        assert ancestors(by_name(found, name), found) == ["POST /chat"]


def test_a_streamed_turn_keeps_its_spans_in_the_request_trace(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    body = {"message": TOOL_TURN, "stream": True}
    response = traced.post("/chat", json=body, headers={"traceparent": TRACEPARENT})
    assert b"event: done" in response.get_data()
    found = spans.get_finished_spans()
    request = by_name(found, "POST /chat")
    assert (request.attributes or {})["agent.stream_ending"] == "done"
    for name in ("claim", "commit", "assistant"):  # the SDK's trace, named after the agent
        assert ancestors(by_name(found, name), found) == ["POST /chat"], name
    assert {s.context.trace_id for s in found} == {int(TRACE, 16)}


def test_log_lines_carry_the_request_spans_trace_without_a_header(
    traced: FlaskClient, spans: InMemorySpanExporter
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        assert traced.post("/chat", json={"message": "hello"}).status_code == 200
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    request = by_name(spans.get_finished_spans(), "POST /chat")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    (line,) = [e for e in entries if e["logger"] == "agent.api.app"]
    trace_id = f"{request.context.trace_id:032x}"
    assert line["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{trace_id}"
    assert line["logging.googleapis.com/spanId"] == f"{request.context.span_id:016x}"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with serving() as server:
        yield server


def test_otlp_spans_reach_a_collector_before_the_response_completes(
    settings_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    server = LiveServer(
        settings_env
        | {"TRACE_EXPORT": "otlp", "TRACE_OTLP_ENDPOINT": receiver.endpoint, "LOG_LEVEL": "INFO"}
    )
    try:
        status, _, _ = server.call(
            "POST", "/chat", {"message": TOOL_TURN}, headers={"traceparent": TRACEPARENT}
        )
        assert status == 200
        # Flushed before the response completed: already here, no waiting.
        with receiver.received:
            names = {s["name"] for s in receiver.spans if s["trace_id"] == TRACE}
        assert {"POST /chat", "claim", "commit", "chat demo-model"} <= names
        assert "execute_tool calculate" in names
        status, _, _ = server.call("POST", "/chat", {"message": "hello"})
        assert status == 200
    finally:
        log = server.stop()
    with receiver.received:
        requests = [s for s in receiver.spans if s["name"] == "POST /chat"]
    assert requests[0]["parent"] == PARENT
    assert SECRET not in json.dumps(receiver.spans)
    # The second request sent no trace header: its log line names the span's new trace.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    chat_lines = [e for e in lines if e.get("message", "").startswith("POST /chat")]
    trace_id = requests[1]["trace_id"]
    assert chat_lines[1]["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{trace_id}"
    assert chat_lines[1]["logging.googleapis.com/spanId"] == requests[1]["span_id"]


def test_cloud_trace_sends_otlp_with_the_runtimes_own_token(
    settings_env: dict[str, str], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # Application Default Credentials as on Cloud Functions: the metadata server's. In a
    # process of its own: google-auth reads GCE_METADATA_HOST once per process.
    standin = Standin(new_key(service_account_email("agent-runtime"))).start()
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env |= settings_env | {
        "TRACE_EXPORT": "cloud_trace",
        "TRACE_OTLP_ENDPOINT": receiver.endpoint,  # loopback http: the tests' stand-in
        "GCE_METADATA_HOST": standin.host,
        "GCE_METADATA_IP": standin.host,
        "CLOUDSDK_CONFIG": str(tmp_path),  # no developer ADC file
    }
    server = LiveServer(env)
    try:
        assert standin.token_requests == 0  # nothing fetched at startup
        for _ in range(2):
            assert server.call("GET", "/healthz")[0] == 200
    finally:
        server.stop()
        standin.stop()
    assert len(receiver.authorizations) == 2  # each flushed before its response
    assert all(standin.token_is_valid(a or "") for a in receiver.authorizations)
    assert standin.token_requests == 1  # one token serves both exports
    assert receiver.resources[0]["gcp.project_id"] == PROJECT


def test_cloud_trace_refuses_to_send_its_token_in_clear_text() -> None:
    with pytest.raises(SettingsError, match="TRACE_OTLP_ENDPOINT must be https"):
        Settings.from_env(
            {"TRACE_EXPORT": "cloud_trace", "TRACE_OTLP_ENDPOINT": "http://collector:4318/"}
        )
    assert Settings(trace_export="cloud_trace").traces_url.startswith("https://telemetry.")
