"""Gemini on Vertex AI with no secret: ``MODEL_PROVIDER=vertex``.

The service runs as deployed: its own process, no ``OPENAI_API_KEY`` anywhere in its
environment, credentials found by google-auth at the metadata server. Here that server
is the loopback stand-in (tests/support/google_metadata_and_iam.py), issuing tokens
that expire in seconds, and Vertex AI is a stand-in that accepts only a current token
(tests/support/vertex_stand_in.py), in front of the demo model.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.auth._helpers import REFRESH_THRESHOLD

from agent.base.settings import VERTEX_DEFAULT_MODEL, Settings, SettingsError
from agent.runtime.vertex_tokens import AccessTokens
from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator
from local.server import LiveServer
from local.throwaway_key import new_key
from tests.support.constants import LOOPBACK, PROJECT, service_account_email
from tests.support.google_metadata_and_iam import Standin
from tests.support.openapi_contract import assert_conforms
from tests.support.vertex_stand_in import VertexStandIn

FRESH_SECONDS = 4
TOKEN_SECONDS = int(REFRESH_THRESHOLD.total_seconds()) + FRESH_SECONDS
"""Tokens google-auth calls fresh for FRESH_SECONDS, then stale (within its threshold)."""


def test_vertex_settings_default_to_gemini_over_chat_completions() -> None:
    settings = Settings.from_env({"MODEL_PROVIDER": "vertex", "GOOGLE_CLOUD_PROJECT": "p-1"})
    assert settings.model_api == "chat_completions"
    assert settings.agent_model == VERTEX_DEFAULT_MODEL == "google/gemini-3.8-flash"
    assert settings.vertex_base_url == (
        "https://aiplatform.googleapis.com/v1/projects/p-1/locations/global/endpoints/openapi"
    )
    regional = Settings.from_env(
        {
            "MODEL_PROVIDER": "vertex",
            "GOOGLE_CLOUD_PROJECT": "p-1",
            "VERTEX_LOCATION": "europe-west4",
        }
    )
    assert regional.vertex_base_url.startswith(
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p-1/locations/europe-west4/"
    )
    # An explicit model is kept; OpenAI's defaults are untouched.
    chosen = {"MODEL_PROVIDER": "vertex", "GOOGLE_CLOUD_PROJECT": "p", "AGENT_MODEL": "google/x"}
    assert Settings.from_env(chosen).agent_model == "google/x"
    assert Settings.from_env({}).agent_model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MODEL_PROVIDER": "vertex"}, "GOOGLE_CLOUD_PROJECT"),
        ({"MODEL_PROVIDER": "vertex", "MODEL_API": "responses"}, "MODEL_API"),
        ({"MODEL_PROVIDER": "gemini"}, "MODEL_PROVIDER"),
        ({"VERTEX_LOCATION": "us central"}, "VERTEX_LOCATION"),
        ({"VERTEX_ENDPOINT": "http://aiplatform.example"}, "VERTEX_ENDPOINT"),
        ({"VERTEX_ENDPOINT": "http://localhost:@evil.example/"}, "VERTEX_ENDPOINT"),
        ({"VERTEX_ENDPOINT": "http://localhost.evil.example"}, "VERTEX_ENDPOINT"),
    ],
)
def test_vertex_settings_refuse_what_cannot_work(env: dict[str, str], named: str) -> None:
    full = {"MODEL_PROVIDER": "vertex", "GOOGLE_CLOUD_PROJECT": "p"} | env
    if named == "GOOGLE_CLOUD_PROJECT":
        del full["GOOGLE_CLOUD_PROJECT"]
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(full)


@pytest.fixture
def metadata() -> Iterator[Standin]:
    running = Standin(new_key(service_account_email("agent-runtime")))
    running.token_seconds = TOKEN_SECONDS
    running.start()
    yield running
    running.stop()


@pytest.fixture
def vertex(metadata: Standin, model: DemoModelServer) -> Iterator[VertexStandIn]:
    running = VertexStandIn(metadata, model.base_url, PROJECT).start()
    yield running
    running.stop()


def keyless_env(metadata: Standin, tmp_path: Path) -> dict[str, str]:
    """The process environment of a deployed function: no key, a metadata server."""
    drop = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "GOOGLE_APPLICATION_CREDENTIALS", "AGENT_MODEL"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {
        "GCE_METADATA_HOST": metadata.host,
        "GCE_METADATA_IP": metadata.host,
        "CLOUDSDK_CONFIG": str(tmp_path),  # no gcloud application-default credentials
    }


def test_concurrent_calls_with_a_stale_token_refresh_it_once(
    metadata: Standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in keyless_env(metadata, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    tokens = AccessTokens()

    async def eight() -> list[str]:
        return await asyncio.gather(*(tokens() for _ in range(8)))

    first = asyncio.run(eight())
    assert len(set(first)) == 1 and metadata.token_requests == 1
    assert asyncio.run(eight()) == first and metadata.token_requests == 1  # cached
    time.sleep(FRESH_SECONDS + 0.5)  # within google-auth's refresh threshold of expiry
    second = asyncio.run(eight())
    assert len(set(second)) == 1 and second != first and metadata.token_requests == 2
    assert metadata.token_is_valid(f"Bearer {second[0]}")


@pytest.fixture
def vertex_server(
    firestore: FirestoreEmulator, metadata: Standin, vertex: VertexStandIn, tmp_path: Path
) -> Iterator[LiveServer]:
    env = keyless_env(metadata, tmp_path) | {
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "AUTH_MODE": "none",
        "MODEL_PROVIDER": "vertex",
        "VERTEX_ENDPOINT": vertex.url,
        "FUNCTION_TIMEOUT_SECONDS": "12",
        "DEADLINE_MARGIN_SECONDS": "2",
    }
    assert not any("OPENAI_API_KEY" in name for name in env)
    server = LiveServer(env)
    yield server
    server.stop()


def test_turns_across_a_token_expiry_refresh_it_exactly_once(
    vertex_server: LiveServer, metadata: Standin, vertex: VertexStandIn
) -> None:
    def turn(message: str) -> None:
        status, body, _ = vertex_server.call(
            "POST", "/chat", {"message": message, "session_id": "gemini"}
        )
        assert status == 200, body

    turn("first")
    turn("second")
    assert metadata.token_requests == 1  # never per request
    time.sleep(FRESH_SECONDS + 0.5)  # the token is about to expire
    turn("third")
    turn("fourth")
    assert metadata.token_requests == 2
    assert vertex.accepted == 4 and vertex.rejected == []  # never a stale token
    _, history, _ = vertex_server.call("GET", "/sessions/gemini")
    users = [item["content"] for item in history["items"] if item.get("role") == "user"]
    assert users == ["first", "second", "third", "fourth"]


def test_a_quota_storm_is_503_model_overloaded_within_the_deadline(
    vertex_server: LiveServer, vertex: VertexStandIn
) -> None:
    vertex.quota_exhausted = True
    started = time.monotonic()
    status, body, headers = vertex_server.call("POST", "/chat", {"message": "hi"})
    elapsed = time.monotonic() - started
    assert status == 503 and body["error"]["code"] == "model_overloaded", body
    assert int(headers["Retry-After"]) >= 1
    assert_conforms("POST", "/chat", 503, body, headers)
    assert elapsed < 10  # the turn's budget: 12 s less the 2 s margin
    assert len(vertex.rejected) > 1 and set(vertex.rejected) == {429}  # retried, then gave up


@pytest.mark.parametrize("failure", ["token_refused", "no_credentials"])
def test_a_failed_token_refresh_is_502_model_error_logged_by_type_only(
    firestore: FirestoreEmulator,
    metadata: Standin,
    vertex: VertexStandIn,
    tmp_path: Path,
    failure: str,
) -> None:
    """google-auth failing (the metadata server refuses a token, or no credentials are
    found at all) is the model provider failing: 502, never a 500 with a traceback."""
    env = keyless_env(metadata, tmp_path) | {
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "AUTH_MODE": "none",
        "MODEL_PROVIDER": "vertex",
        "VERTEX_ENDPOINT": vertex.url,
    }
    if failure == "token_refused":
        metadata.token_status = 403
    else:  # nothing answers where the metadata server should be
        env |= {"GCE_METADATA_HOST": f"{LOOPBACK}:9", "GCE_METADATA_IP": f"{LOOPBACK}:9"}
    server = LiveServer(env)
    try:
        status, body, headers = server.call("POST", "/chat", {"message": "hi", "session_id": "v"})
        assert status == 502, body
        assert body["error"]["code"] == "model_error"
        assert_conforms("POST", "/chat", 502, body, headers)
        status, _, _ = server.call("GET", "/sessions/v")
        assert status == 404  # nothing stored
    finally:
        log = server.stop()
    assert vertex.accepted == 0
    assert "Traceback" not in log and "PERMISSION_DENIED" not in log and "No token." not in log
    expected = "RefreshError" if failure == "token_refused" else "DefaultCredentialsError"
    refused = [line for line in log.splitlines() if "Vertex AI" in line]
    assert refused and expected in refused[0], log
