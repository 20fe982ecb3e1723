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
print(json.dumps({
    "storage_imported": any(m.startswith("google.cloud.storage") for m in sys.modules),
    "trace_processors": len(getattr(provider, "_multi_processor")._processors),
}))
"""


def probe(**env: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
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
    assert found["trace_processors"] == 0


def test_tracing_on_keeps_the_sdks_exporter() -> None:
    assert probe(TRACING_ENABLED="true", OPENAI_API_KEY="sk-test")["trace_processors"] == 1
