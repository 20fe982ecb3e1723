"""OpenTelemetry's own environment variables (issue 19 item 9, issue 25 item 4): the
endpoint by the specification's rules, the project's own variable first, credentials
never in clear text to another host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
