"""Large answers through the API, on the Firestore and Cloud Storage emulators.

The demo model's ``reply_bytes`` control makes answers of an exact size. Signed URLs
returned by the API are fetched from the storage emulator (which proves the path, not
the signature) and verified offline against the throw-away key's public half (which
proves the signature).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.base.clock import utc_now
from agent.results.policy import INLINE_FALLBACK_MAX_BYTES, PREVIEW_BYTES
from agent.store.history import MAX_TURN_BYTES
from local.demo_model import DemoModelServer, decide_reply, fit_to_bytes
from local.emulators import StorageEmulator, free_port
from local.throwaway_key import ThrowawayKey
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY, LOOPBACK, PROJECT, REPO_ROOT
from tests.support.openapi_contract import assert_conforms
from tests.support.signed_url_verifier import verify
from tests.support.stores import service_of

MESSAGE = "Write me the long report."


def expected_answer(size: int, message: str = MESSAGE) -> str:
    """What the demo model answers to a first message when told to answer ``size`` bytes."""
    return fit_to_bytes(decide_reply([{"role": "user", "content": message}], None)[0], size)


def chat(client: FlaskClient, session_id: str, message: str = MESSAGE) -> dict[str, Any]:
    response = client.post("/chat", json={"message": message, "session_id": session_id})
    assert response.status_code == 200, response.get_json()
    assert_conforms("POST", "/chat", 200, response.get_json(), response.headers)
    body: dict[str, Any] = response.get_json()
    return body


def fetch(url: str) -> tuple[bytes, Message]:
    """Body and headers (matched case-insensitively) of a GET."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read(), response.headers


def answer_items(client: FlaskClient, session_id: str) -> list[dict[str, Any]]:
    items = client.get(f"/sessions/{session_id}").get_json()["items"]
    return [item for item in items if item.get("role") == "assistant"]


@pytest.fixture
def results_client(
    make_client: Callable[..., FlaskClient], results_env: dict[str, str]
) -> FlaskClient:
    return make_client(**results_env)


def test_a_large_answer_is_offloaded_behind_a_signed_url(
    results_client: FlaskClient,
    model: DemoModelServer,
    storage: StorageEmulator,
    signing_key: ThrowawayKey,
) -> None:
    model.control(reply_bytes=300_000)  # over the default 262144
    before = dt.datetime.now(dt.UTC)
    body = chat(results_client, "report")
    result = body["result"]
    turn_id = result["turn_id"]
    full = expected_answer(300_000).encode()
    assert result["bytes"] == len(full) == 300_000
    assert result["sha256"] == hashlib.sha256(full).hexdigest()
    assert result["content_type"] == "text/markdown; charset=utf-8"
    expires = dt.datetime.fromisoformat(result["expires_at"].replace("Z", "+00:00"))
    assert dt.timedelta(seconds=895) < expires - before <= dt.timedelta(seconds=901)
    # The reply is a marked preview, not the answer.
    reply = body["reply"]
    head, _, marker = reply.rpartition("\n\n[… truncated: ")
    assert full.startswith(head.encode()) and len(head.encode()) == PREVIEW_BYTES
    assert "of 300000 bytes shown" in marker and turn_id in marker
    assert "warnings" not in body
    # The URL fetches exactly the answer, as a named markdown attachment...
    data, headers = fetch(result["url"])
    assert hashlib.sha256(data).hexdigest() == result["sha256"]
    assert data == full
    assert headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert headers["Content-Disposition"] == f'attachment; filename="result-{turn_id}.md"'
    # ...and its signature is the throw-away key's, for GET only.
    assert verify(result["url"], signing_key.public_pem) == signing_key.email
    assert storage.object_names() == [f"results/report/{turn_id}.md"]


def test_object_metadata_links_the_result_to_its_session(
    results_client: FlaskClient, model: DemoModelServer, storage: StorageEmulator
) -> None:
    from google.cloud import storage as gcs

    model.control(reply_bytes=300_000)
    result = chat(results_client, "linked")["result"]
    blob = (
        gcs.Client(project=PROJECT)
        .bucket(storage.bucket)
        .get_blob(f"results/linked/{result['turn_id']}.md")
    )
    assert blob is not None
    generation = service_of(results_client).store.current_generation("linked", utc_now())
    assert generation is not None
    assert blob.metadata == {
        "session_id": "linked",
        "turn_id": result["turn_id"],
        "sha256": result["sha256"],
        "generation": generation,  # the life of the session it belongs to
    }
    assert blob.content_disposition == f'attachment; filename="result-{result["turn_id"]}.md"'


def test_the_history_keeps_a_preview_and_later_turns_send_only_that(
    results_client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(reply_bytes=300_000)
    first = chat(results_client, "remembered")
    model.control(reply_bytes=None)
    second = chat(results_client, "remembered", "And now a short one.")
    assert "result" not in second and "message 2" in second["reply"]
    stored = answer_items(results_client, "remembered")[0]["content"][0]["text"]
    assert len(stored.encode()) < PREVIEW_BYTES + 300
    assert first["result"]["turn_id"] in stored and "received all of it as a file" in stored
    # What the model was sent on the second turn: the preview, not 300 kB.
    sent = model.requests[-1]["messages"]
    assert len(json.dumps(sent)) < PREVIEW_BYTES + 2000
    assert any(first["result"]["turn_id"] in str(m.get("content")) for m in sent)


def test_an_answer_at_the_limit_stays_inline_and_one_byte_more_is_offloaded(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    client = make_client(**results_env, result_inline_max_bytes=20_000)
    model.control(reply_bytes=20_000)
    body = chat(client, "at-limit")
    assert "result" not in body and body["reply"] == expected_answer(20_000)
    assert answer_items(client, "at-limit")[0]["content"][0]["text"] == body["reply"]
    assert storage.object_names() == []
    model.control(reply_bytes=20_001)
    body = chat(client, "over-limit")
    assert body["result"]["bytes"] == 20_001
    assert len(storage.object_names()) == 1


def test_an_answer_larger_than_a_turn_commit_still_works(
    results_client: FlaskClient, model: DemoModelServer, storage: StorageEmulator
) -> None:
    # Without offloading, this answer could not be stored (one turn adds <= 3 MiB).
    model.control(reply_bytes=MAX_TURN_BYTES + 500_000)
    result = chat(results_client, "huge")["result"]
    data, _ = fetch(result["url"])
    assert len(data) == MAX_TURN_BYTES + 500_000
    assert hashlib.sha256(data).hexdigest() == result["sha256"]


def test_a_small_answer_is_not_offloaded(
    results_client: FlaskClient, model: DemoModelServer, storage: StorageEmulator
) -> None:
    body = chat(results_client, "small")
    assert "result" not in body and "warnings" not in body
    assert body["reply"] == expected_answer(len(body["reply"].encode()))
    assert storage.object_names() == []


def test_a_result_url_can_be_signed_again(
    results_client: FlaskClient,
    model: DemoModelServer,
    storage: StorageEmulator,
    signing_key: ThrowawayKey,
) -> None:
    model.control(reply_bytes=300_000)
    first = chat(results_client, "again")["result"]
    path = f"/sessions/again/results/{first['turn_id']}"
    response = results_client.get(path)
    assert response.status_code == 200, response.get_json()
    assert_conforms("GET", path, 200, response.get_json(), response.headers)
    again = response.get_json()
    assert {k: again[k] for k in ("turn_id", "bytes", "content_type", "sha256")} == {
        k: first[k] for k in ("turn_id", "bytes", "content_type", "sha256")
    }
    verify(again["url"], signing_key.public_pem)
    data, _ = fetch(again["url"])
    assert hashlib.sha256(data).hexdigest() == first["sha256"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/sessions/nobody/results/abc", 404, "session_not_found"),
        ("/sessions/exists/results/no-such-turn", 404, "result_not_found"),
        ("/sessions/exists/results/bad.id", 404, "result_not_found"),
        ("/sessions/bad!id/results/abc", 400, "invalid_session_id"),
    ],
)
def test_resigning_what_is_not_there(
    results_client: FlaskClient, storage: StorageEmulator, path: str, status: int, code: str
) -> None:
    chat(results_client, "exists")
    response = results_client.get(path)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert_conforms("GET", path, status, response.get_json(), response.headers)


def test_resigning_after_the_session_expired_is_404(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    client = make_client(**results_env, session_ttl_seconds=1)
    model.control(reply_bytes=300_000)
    turn_id = chat(client, "fleeting")["result"]["turn_id"]
    time.sleep(1.2)
    response = client.get(f"/sessions/fleeting/results/{turn_id}")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "session_not_found"


def test_deleting_a_session_deletes_its_results(
    results_client: FlaskClient, model: DemoModelServer, storage: StorageEmulator
) -> None:
    model.control(reply_bytes=300_000)
    doomed = [chat(results_client, "doomed")["result"] for _ in range(2)]
    kept = chat(results_client, "kept")["result"]
    assert len(storage.object_names()) == 3
    response = results_client.delete("/sessions/doomed")
    assert response.status_code == 204
    assert storage.object_names() == [f"results/kept/{kept['turn_id']}.md"]
    with pytest.raises(urllib.error.HTTPError) as gone:
        fetch(doomed[0]["url"])
    assert gone.value.code == 404
    assert results_client.get(f"/sessions/doomed/results/{doomed[1]['turn_id']}").status_code == 404


def test_storage_down_returns_the_answer_inline_with_a_warning(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client is made on the first offload, so it reads this dead address.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{LOOPBACK}:{free_port()}")
    client = make_client(**results_env, storage_timeout_seconds=1)
    model.control(reply_bytes=300_000)
    started = time.monotonic()
    body = chat(client, "down")
    assert time.monotonic() - started < 5
    assert body["reply"] == expected_answer(300_000)
    assert "result" not in body
    assert [w["code"] for w in body["warnings"]] == ["result_not_offloaded"]
    stored = answer_items(client, "down")[0]["content"][0]["text"]
    assert len(stored.encode()) < PREVIEW_BYTES + 300 and "it was not stored" in stored


def test_storage_down_and_too_large_to_inline_is_503_and_changes_nothing(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{LOOPBACK}:{free_port()}")
    client = make_client(**results_env, storage_timeout_seconds=1)
    chat(client, "unchanged", "first")
    before = client.get("/sessions/unchanged").get_json()
    model.control(reply_bytes=INLINE_FALLBACK_MAX_BYTES + 1000)
    response = client.post("/chat", json={"message": "again", "session_id": "unchanged"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "result_storage_unavailable"
    assert_conforms("POST", "/chat", 503, response.get_json(), response.headers)
    assert client.get("/sessions/unchanged").get_json() == before
    # The claim was released: the session takes the next turn at once.
    model.control(reply_bytes=None)
    chat(client, "unchanged", "third")


def test_storage_down_on_delete_is_503_and_a_retry_cleans_up(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model.control(reply_bytes=300_000)
    chat(make_client(**results_env), "leftovers")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{LOOPBACK}:{free_port()}")
    response = make_client(**results_env, storage_timeout_seconds=1).delete("/sessions/leftovers")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "result_storage_unavailable"
    assert_conforms("DELETE", "/sessions/leftovers", 503, response.get_json(), response.headers)
    assert len(storage.object_names()) == 1
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage.url)
    response = make_client(**results_env).delete("/sessions/leftovers")
    assert response.status_code == 404  # the documents went on the first try
    assert storage.object_names() == []


def test_without_a_bucket_large_answers_stay_inline(
    client: FlaskClient, model: DemoModelServer
) -> None:
    model.control(reply_bytes=300_000)
    body = chat(client, "no-bucket")
    assert body["reply"] == expected_answer(300_000) and "result" not in body
    response = client.get("/sessions/no-bucket/results/abc")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "result_not_found"


def test_the_storage_client_is_made_on_the_first_offload_only(
    results_env: dict[str, str], model: DemoModelServer
) -> None:
    # A fresh interpreter: in this one other tests have imported the storage library.
    script = (
        "import sys, main\n"
        "loaded = lambda: 'google.cloud.storage' in sys.modules\n"
        "print('at start', loaded())\n"
        "client = main.app.test_client()\n"
        "body = client.post('/chat', json={'message': 'hi'}).get_json()\n"
        "print('after offload', loaded(), 'result' in body)\n"
    )
    model.control(reply_bytes=300_000)
    env = results_env | {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LOG_LEVEL": "ERROR"}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-2:] == ["at start False", "after offload True True"]


RESULT = {
    "turn_id": "0f3kQ9x2bLmA7cZe",
    "url": "https://storage.googleapis.com/b/results/s/0f3kQ9x2bLmA7cZe.md?X-Goog-Signature=ab",
    "bytes": 300000,
    "content_type": "text/markdown; charset=utf-8",
    "expires_at": "2025-01-01T13:15:00Z",
    "sha256": "f" * 64,
}
CHAT = {
    "session_id": "s",
    "reply": "preview",
    "new_session": False,
    "usage": {"requests": 1, "input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    "expires_at": "2025-01-01T13:00:00Z",
    "status": "completed",
}
WARNING = {"code": "result_not_offloaded", "message": "Returned inline."}


def test_the_contract_describes_result_and_warnings() -> None:
    assert_conforms("POST", "/chat", 200, CHAT | {"result": RESULT})
    assert_conforms("POST", "/chat", 200, CHAT | {"warnings": [WARNING]})
    assert_conforms("GET", "/sessions/s/results/0f3kQ9x2bLmA7cZe", 200, RESULT)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (CHAT | {"result": RESULT | {"sha256": "xyz"}}, "sha256"),
        (CHAT | {"result": RESULT | {"content_type": "text/html"}}, "content_type"),
        (CHAT | {"result": {k: v for k, v in RESULT.items() if k != "url"}}, "'url'"),
        (CHAT | {"warnings": [WARNING | {"code": "something_else"}]}, "code"),
        (CHAT | {"warnings": []}, "warnings"),
    ],
)
def test_the_contract_rejects_drift_in_result_and_warnings(body: object, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        assert_conforms("POST", "/chat", 200, body)


def test_results_belong_to_the_session_owner(
    make_client: Callable[..., FlaskClient],
    results_env: dict[str, str],
    model: DemoModelServer,
    storage: StorageEmulator,
) -> None:
    client = make_client(**results_env, auth_mode="api_key", auth_api_keys=API_KEYS)
    alice = {"X-API-Key": ALICE_KEY}
    bob = {"X-API-Key": BOB_KEY}
    model.control(reply_bytes=300_000)
    body = {"message": MESSAGE, "session_id": "alices"}
    turn_id = client.post("/chat", json=body, headers=alice).get_json()["result"]["turn_id"]
    path = f"/sessions/alices/results/{turn_id}"
    # To Bob, Alice's result looks exactly like a session that does not exist.
    foreign = client.get(path, headers=bob)
    absent = client.get(f"/sessions/nobody/results/{turn_id}", headers=bob)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.get_json() == absent.get_json()
    # Bob's DELETE of her session is a 404 and leaves her objects alone.
    assert client.delete("/sessions/alices", headers=bob).status_code == 404
    assert storage.object_names() == [f"results/alices/{turn_id}.md"]
    assert client.get(path, headers=alice).status_code == 200
