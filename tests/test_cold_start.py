"""What importing the service costs: nothing that can wait until it is needed.

The timings themselves are measured by the benchmark (``make bench``); these tests
pin the decisions behind them, which a change could silently undo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.constants import LOOPBACK, REPO_ROOT, UNREACHABLE_MODEL_URL

PROBE = """
import json, sys
import main
from agents.tracing import get_trace_provider
provider = get_trace_provider()
processors = getattr(provider, "_multi_processor")._processors
print(json.dumps({
    "storage_imported": any(m.startswith("google.cloud.storage") for m in sys.modules),
    "trace_processors": [type(p).__name__ for p in processors],
    "opentelemetry": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
}))
"""
LIBRARIES = """
import json, sys
import functions_framework, flask, openai, agents, google.cloud.firestore
print(json.dumps({
    "opentelemetry": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
}))
"""


def probe(code: str = PROBE, **env: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=os.environ
        | {"OPENAI_BASE_URL": UNREACHABLE_MODEL_URL, "GOOGLE_CLOUD_PROJECT": "p"}
        | {"FIRESTORE_EMULATOR_HOST": f"{LOOPBACK}:9", "LOG_LEVEL": "WARNING"}
        | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_import_builds_no_trace_exporter_and_no_storage_client() -> None:
    found = probe()
    # google.cloud.storage costs about 0.3 s to import: only when a result needs it.
    assert found["storage_imported"] is False
    # The SDK's default processor builds an HTTP exporter (about 40 ms) that tracing
    # off would never use.
    assert found["trace_processors"] == []


def test_tracing_on_keeps_the_sdks_exporter() -> None:
    found = probe(TRACING_ENABLED="true", OPENAI_API_KEY="sk-test")
    assert found["trace_processors"] == ["BatchTraceProcessor"]


def test_trace_export_none_imports_no_opentelemetry_of_its_own() -> None:
    # google.api_core and the SDK's mcp import the OpenTelemetry *API* themselves when
    # it is installed; the service with TRACE_EXPORT=none must add nothing to that.
    assert probe()["opentelemetry"] == probe(LIBRARIES)["opentelemetry"]


def test_trace_export_sends_sdk_spans_to_opentelemetry_only() -> None:
    found = probe(TRACE_EXPORT="otlp", OPENAI_API_KEY="sk-test")
    # A key is configured, yet nothing goes to OpenAI: only the bridge is registered.
    assert found["trace_processors"] == ["OpenTelemetryBridge"]
    assert "opentelemetry.sdk.trace" in found["opentelemetry"]
    both = probe(TRACE_EXPORT="otlp", TRACING_ENABLED="true", OPENAI_API_KEY="sk-test")
    assert both["trace_processors"] == ["BatchTraceProcessor", "OpenTelemetryBridge"]
