"""OpenTelemetry's own environment variables (issue 19 item 9, issue 25 item 4): the
endpoint by the specification's rules, the project's own variable first, credentials
never in clear text to another host."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.base import otel, tracing
from agent.base.settings import Settings, SettingsError
from local.server import LiveServer
from tests.support.otlp_receiver import OtlpReceiver, serving

OTLP = {"TRACE_EXPORT": "otlp"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with serving() as server:
        yield server


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        # The base endpoint gets the signal's path, after any path of its own.
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            "http://collector:4318/v1/traces",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp/"},
            "https://c.example/otlp/v1/traces",
        ),
        # The signal's own endpoint is used as given, and wins over the base one.
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom",
            },
            "http://traces:4318/custom",
        ),
        # The project's own variable wins over both.
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom",
                "TRACE_OTLP_ENDPOINT": "http://ours:4318/v1/traces",
            },
            "http://ours:4318/v1/traces",
        ),
    ],
)
def test_the_otlp_endpoint_follows_the_specification(env: dict[str, str], url: str) -> None:
    assert Settings.from_env(OTLP | env).traces_url == url


def test_cloud_trace_keeps_googles_endpoint() -> None:
    # Its bearer token must not follow a collector's variable somewhere else.
    env = {"TRACE_EXPORT": "cloud_trace", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example"}
    assert Settings.from_env(env).traces_url == "https://telemetry.googleapis.com/v1/traces"


@pytest.mark.parametrize(
    "headers", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"]
)
def test_credentials_never_go_in_clear_text_to_another_host(headers: str) -> None:
    secret = "api-key=s3cr3t-value"
    env = OTLP | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318", headers: secret}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert headers in message and "http://collector.example:4318/v1/traces" in message
    assert "\n" not in message and "s3cr3t" not in message
    # https, or a collector on loopback, is fine; so are headers while export is off.
    Settings.from_env(env | {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example"})
    Settings.from_env(env | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    Settings.from_env(env | {"TRACE_EXPORT": "none"})
    # The default endpoint is loopback; without headers, http anywhere is the operator's call.
    Settings.from_env(OTLP | {headers: secret})
    Settings.from_env(OTLP | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318"})


def test_the_headers_are_never_in_the_settings_repr() -> None:
    env = OTLP | {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr3t-value"}
    assert "s3cr3t" not in repr(Settings.from_env(env))


def test_spans_reach_the_collector_named_by_opentelemetrys_variables(
    settings_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    base = receiver.endpoint.removesuffix("/v1/traces")
    server = LiveServer(
        settings_env
        | OTLP
        | {
            "OTEL_EXPORTER_OTLP_ENDPOINT": base,
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20collector-key,x-tenant=t1",
        }
    )
    try:
        status, _, _ = server.call("GET", "/healthz")
        assert status == 200
    finally:
        server.stop()
    with receiver.received:
        assert [s["name"] for s in receiver.spans] == ["GET /healthz"]
        (sent,) = receiver.headers
    assert (sent["authorization"], sent["x-tenant"]) == ("Bearer collector-key", "t1")


def resource_of(settings: Settings) -> dict[str, object]:
    """The resource attributes the service's spans are exported with."""
    memory = InMemorySpanExporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(otel, "build_exporter", lambda settings: memory)
        backend = otel.OtelBackend(settings)
    backend.start_span("probe", None, "internal", {}).end()
    backend.shutdown()
    (span,) = memory.get_finished_spans()
    return dict(span.resource.attributes)


def test_the_service_name_and_resource_attributes_are_the_operators() -> None:
    attributes = "deployment.environment.name=prod,team=a%20b,service.name=from-attributes"
    named = Settings.from_env(
        OTLP | {"OTEL_SERVICE_NAME": "billing-agent", "OTEL_RESOURCE_ATTRIBUTES": attributes}
    )
    resource = resource_of(named)
    assert resource["service.name"] == "billing-agent"  # OTEL_SERVICE_NAME first
    assert (resource["deployment.environment.name"], resource["team"]) == ("prod", "a b")
    from_attributes = Settings.from_env(OTLP | {"OTEL_RESOURCE_ATTRIBUTES": attributes})
    assert resource_of(from_attributes)["service.name"] == "from-attributes"
    platform = Settings.from_env(OTLP | {"K_SERVICE": "agent", "AUTH_AUDIENCE": "https://a.b"})
    assert resource_of(platform)["service.name"] == "agent"
    with pytest.raises(SettingsError, match="OTEL_RESOURCE_ATTRIBUTES"):
        Settings.from_env(OTLP | {"OTEL_RESOURCE_ATTRIBUTES": "no-equals-sign"})


def test_otel_traces_exporter_stands_for_trace_export() -> None:
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "otlp"}).trace_export == "otlp"
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "none"}).trace_export == "none"
    both = {"OTEL_TRACES_EXPORTER": "otlp", "TRACE_EXPORT": "cloud_trace"}
    assert Settings.from_env(both).trace_export == "cloud_trace"  # ours wins
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})
    # Set for other programs of the environment, it is not ours to refuse once ours is set.
    assert Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin", "TRACE_EXPORT": "none"})


def test_opentelemetrys_variables_are_checked_only_where_used() -> None:
    others = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",  # a gRPC exporter's, elsewhere
        "OTEL_RESOURCE_ATTRIBUTES": "not-a-pair",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "maybe",
    }
    Settings.from_env(others | {"TRACE_CONTENT": "false"})  # export off: none of ours
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT must be"):
        Settings.from_env(OTLP | {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"})


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("true", True),
        ("SPAN_ONLY", True),
        ("span_and_event", True),
        ("False", False),
        ("NO_CONTENT", False),
        ("EVENT_ONLY", False),
    ],
)
def test_the_genai_content_switch_stands_for_trace_content(value: str, content: bool) -> None:
    variable = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
    assert Settings.from_env({variable: value}).trace_content is content
    assert Settings.from_env({variable: value, "TRACE_CONTENT": "false"}).trace_content is False


def test_the_genai_content_switch_puts_text_in_spans(
    make_client: Callable[..., FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = InMemorySpanExporter()
    monkeypatch.setattr(otel, "build_exporter", lambda settings: memory)
    try:
        client = make_client(
            otel_traces_exporter="otlp", otel_instrumentation_genai_capture_message_content="true"
        )
        assert client.post("/chat", json={"message": "my secret is 42"}).status_code == 200
    finally:
        tracing.configure(Settings())
    text = json.dumps([dict(s.attributes or {}) for s in memory.get_finished_spans()])
    assert "my secret is 42" in text


def test_vertex_location_falls_back_to_google_cloud_location() -> None:
    vertex = {"MODEL_PROVIDER": "vertex", "GOOGLE_CLOUD_PROJECT": "p"}
    settings = Settings.from_env(vertex | {"GOOGLE_CLOUD_LOCATION": "europe-west4"})
    assert settings.vertex_location == "europe-west4"
    assert settings.vertex_base_url.startswith("https://europe-west4-aiplatform.googleapis.com/")
    ours = vertex | {"GOOGLE_CLOUD_LOCATION": "europe-west4", "VERTEX_LOCATION": "us-central1"}
    assert Settings.from_env(ours).vertex_location == "us-central1"
    assert Settings.from_env(vertex).vertex_location == "global"
