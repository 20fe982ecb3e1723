"""The OpenTelemetry side of ``tracing.py``, imported only when ``TRACE_EXPORT`` is on.

One TracerProvider of our own (not the global one: nothing else in the process should
start exporting because we did), a batch span processor and the standard OTLP/HTTP
exporter, to a collector or, for Cloud Trace, to Google's Telemetry API.

When spans leave the process: Cloud Functions throttles the CPU once a response is
sent, so the batch processor's background thread, which exports every few seconds,
may sit frozen until the next request comes (or the instance is reclaimed with the
spans in memory). ``flush`` therefore exports what is queued before the response
completes, bounded by ``TRACE_FLUSH_SECONDS``; past the bound the request goes on and
the background thread finishes the export when it gets CPU.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator, Mapping

import google.auth
import google.auth.transport.requests
import requests
from google.auth.credentials import Credentials
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.re import parse_env_headers

from agent.base.logs import IncomingTrace, cloud_logging_trace
from agent.base.settings import Settings, resource_attributes
from agent.base.span_types import Attribute, Kind, Span

_KINDS = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}


class OtelSpan:
    """An OpenTelemetry span behind ``span_types.Span`` and ``span_types.RequestSpan``."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._token: object | None = None

    def set(self, key: str, value: Attribute | None) -> None:
        if value is not None:
            self.span.set_attribute(key, value)

    def rename(self, name: str) -> None:
        self.span.update_name(name)

    def fail(self, description: str) -> None:
        self.span.set_status(Status(StatusCode.ERROR, description))

    def end(self) -> None:
        self.span.end()

    @contextlib.contextmanager
    def made_current(self) -> Iterator[None]:
        token = otel_context.attach(trace.set_span_in_context(self.span))
        try:
            yield
        finally:
            otel_context.detach(token)

    def attach(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def detach(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def log_fields(self, project: str | None) -> dict[str, object]:
        ids = self.span.get_span_context()
        trace_id, span_id = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
        return cloud_logging_trace(project, trace_id, span_id, ids.trace_flags.sampled)


class OtelBackend:
    def __init__(self, settings: Settings) -> None:
        resource = resource_attributes(settings.otel_resource_attributes)
        resource["service.name"] = settings.service_name
        if settings.google_cloud_project:
            # The Telemetry API files spans under the project this attribute names.
            resource.setdefault("gcp.project_id", settings.google_cloud_project)
        self._provider = TracerProvider(resource=Resource.create(resource))
        self._provider.add_span_processor(BatchSpanProcessor(build_exporter(settings)))
        self._tracer = self._provider.get_tracer("agent")
        self._flush_seconds = settings.trace_flush_seconds

    def start_span(
        self, name: str, parent: Span | None, kind: Kind, attributes: Mapping[str, Attribute]
    ) -> OtelSpan:
        context = trace.set_span_in_context(parent.span) if isinstance(parent, OtelSpan) else None
        started = self._tracer.start_span(
            name, context=context, kind=_KINDS[kind], attributes=attributes
        )
        return OtelSpan(started)

    def start_request(
        self, name: str, incoming: IncomingTrace | None, attributes: Mapping[str, Attribute]
    ) -> OtelSpan:
        # An empty context, not the thread's current one: a request is a root here.
        context = otel_context.Context()
        if incoming is not None:
            # Without a parent span id (X-Cloud-Trace-Context may omit it) a made-up one
            # keeps the caller's trace id; the span shows as a root of that trace.
            parent = incoming.span_id or f"{random.getrandbits(64) | 1:016x}"
            remote = SpanContext(
                trace_id=int(incoming.trace_id, 16),
                span_id=int(parent, 16),
                is_remote=True,
                # A caller that did not say is followed as sampled: Cloud Run's front end
                # marks the traces it drops with o=0.
                trace_flags=trace.TraceFlags(0 if incoming.sampled is False else 1),
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote), context)
        started = self._tracer.start_span(
            name, context=context, kind=SpanKind.SERVER, attributes=attributes
        )
        return OtelSpan(started)

    def flush(self) -> None:
        if self._flush_seconds <= 0:
            return
        # The SDK's force_flush exports synchronously, with no bound of its own: run it
        # aside and stop waiting at the bound.
        exporting = threading.Thread(target=self._provider.force_flush, daemon=True)
        exporting.start()
        exporting.join(self._flush_seconds)

    def shutdown(self) -> None:
        self._provider.shutdown()


def build_exporter(settings: Settings) -> SpanExporter:
    """The OTLP/HTTP exporter for ``TRACE_EXPORT`` (tests replace this function).

    Cloud Trace is reached through Google's Telemetry API, which takes OTLP as is: the
    standard exporter with the runtime's access token (Google deprecated the Cloud Trace
    exporter package in its favour)."""
    session = requests.Session()
    if settings.trace_export == "cloud_trace":
        session.auth = GoogleAuth()
    # Each export is bounded too: a collector that hangs must not pile up flushes.
    timeout = max(settings.trace_flush_seconds, 1.0)
    # The headers as the settings hold them (the exporter would also read the process's
    # environment itself, to the same effect), parsed as the exporter parses them.
    headers = parse_env_headers(settings.otlp_headers or "", liberal=True)
    return OTLPSpanExporter(
        endpoint=settings.traces_url, timeout=timeout, session=session, headers=dict(headers)
    )


class GoogleAuth(requests.auth.AuthBase):
    """The runtime's own access token (Application Default Credentials) on each export:
    found on the first export, not at startup, and refreshed by google-auth before it
    expires. A user's credentials also name their quota project, as the API wants."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        with self._lock:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[TRACE_SCOPE])
            credentials = self._credentials
            if not credentials.valid:
                http = google.auth.transport.requests.Request()
                credentials.refresh(http)  # type: ignore[no-untyped-call]
            credentials.apply(request.headers)  # type: ignore[no-untyped-call]
        return request


TRACE_SCOPE = "https://www.googleapis.com/auth/trace.append"
