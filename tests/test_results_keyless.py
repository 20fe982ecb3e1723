"""The deployed shape of signing, end to end: keyless runtime credentials.

The service runs as on Cloud Functions: ``functions-framework`` in its own process, no
key file, credentials discovered by google-auth from the metadata server. Here the
metadata server and IAM signBlob are a loopback stand-in
(tests/support/google_metadata_and_iam.py) that signs with the service account's
throw-away key, so the URL the API returns is verified against that account's public half.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.demo_model import DemoModelServer
from local.emulators import StorageEmulator
from local.server import LiveServer as Server
from local.throwaway_key import new_key
from tests.support.constants import MODEL, service_account_email
from tests.support.google_metadata_and_iam import Standin
from tests.support.openapi_contract import assert_conforms
from tests.support.signed_url_verifier import verify


@pytest.fixture
def standin() -> Iterator[Standin]:
    running = Standin(new_key(service_account_email("agent-runtime"))).start()
    yield running
    running.stop()


@pytest.fixture
def keyless_server(
    store_env: dict[str, str],
    storage: StorageEmulator,
    model: DemoModelServer,
    standin: Standin,
    tmp_path: Path,
) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env |= store_env | {
        "STORAGE_EMULATOR_HOST": storage.url,
        "OPENAI_BASE_URL": model.base_url,
        "AGENT_MODEL": MODEL,
        "AUTH_MODE": "none",  # authentication is tests/test_auth.py's area
        "RESULTS_BUCKET": storage.bucket,
        "STORAGE_TIMEOUT_SECONDS": "2",
        # Where google-auth finds "the metadata server", and IAM for signBlob.
        "GCE_METADATA_HOST": standin.host,
        "GCE_METADATA_IP": standin.host,
        "IAM_CREDENTIALS_ENDPOINT": standin.url,
        "CLOUDSDK_CONFIG": str(tmp_path),  # no gcloud application-default credentials
    }
    server = Server(env)
    yield server
    server.stop()


def test_runtime_credentials_sign_through_iam_and_the_url_verifies(
    keyless_server: Server, model: DemoModelServer, standin: Standin
) -> None:
    model.control(reply_bytes=300_000)
    results = []
    for _ in range(2):
        status, body, headers = keyless_server.call(
            "POST", "/chat", {"message": "report", "session_id": "keyless"}
        )
        assert status == 200, body
        assert_conforms("POST", "/chat", 200, body, headers)
        results.append(body["result"])
    for result in results:
        # The account's email came from the credentials, after their refresh.
        assert verify(result["url"], standin.account.public_pem) == standin.account.email
    assert len(standin.sign_requests) == 2
    assert standin.token_requests == 1  # refreshed once, then reused while valid
    with urllib.request.urlopen(results[1]["url"], timeout=10) as response:
        assert len(response.read()) == 300_000


def test_a_403_from_sign_blob_is_a_documented_error_and_no_hang(
    keyless_server: Server, model: DemoModelServer, standin: Standin, storage: StorageEmulator
) -> None:
    model.control(reply_bytes=300_000)
    status, body, _ = keyless_server.call("POST", "/chat", {"message": "x", "session_id": "s"})
    assert status == 200
    turn_id = body["result"]["turn_id"]
    standin.sign_status = 403
    started = time.monotonic()
    path = f"/sessions/s/results/{turn_id}"
    status, body, headers = keyless_server.call("GET", path)
    assert time.monotonic() - started < 2
    assert status == 503 and body["error"]["code"] == "url_signing_failed"
    assert_conforms("GET", path, 503, body, headers)
    # A new large answer is not lost: it comes inline, with a warning.
    status, body, headers = keyless_server.call(
        "POST", "/chat", {"message": "y", "session_id": "s"}
    )
    assert status == 200, body
    assert_conforms("POST", "/chat", 200, body, headers)
    assert "result" not in body and len(body["reply"].encode()) == 300_000
    assert body["warnings"][0]["code"] == "result_not_offloaded"
    assert storage.object_names() == [f"results/s/{turn_id}.md"]  # the unsigned one deleted
    log = keyless_server.stop()
    assert "iam.serviceAccounts.signBlob" in log  # the operator is told the fix
    assert "ya29." not in log  # tokens never reach the log
