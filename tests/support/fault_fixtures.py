"""Fixtures for the tests that put the fault proxy (``fault_proxy.py``) between a server
and the Firestore emulator, and what they read back through a server that talks to the
emulator directly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from local.emulators import FirestoreEmulator
from tests.support.fault_proxy import FaultProxy

PairBuilder = Callable[..., tuple[FlaskClient, FlaskClient]]
"""``build(timeout, **settings)``: (a server through the proxy, a server direct)."""


@pytest.fixture
def proxy(firestore: FirestoreEmulator) -> Iterator[FaultProxy]:
    """A fault proxy in front of the Firestore emulator."""
    with FaultProxy(firestore.host) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    """Where the demo's acting tool (``send_message``) writes what it sent."""
    return tmp_path / "outbox.jsonl"


@pytest.fixture
def build_pair(
    make_client: Callable[..., FlaskClient],
    proxy: FaultProxy,
    outbox: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> PairBuilder:
    """Two servers with the acting tool's outbox and ``FIRESTORE_TIMEOUT_SECONDS`` =
    ``timeout``: the first through the proxy, the second direct."""

    def build(timeout: float, **overrides: str) -> tuple[FlaskClient, FlaskClient]:
        env = {"outbox_path": str(outbox), "firestore_timeout_seconds": str(timeout)}
        with monkeypatch.context() as patch:
            patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
            through = make_client(**env | overrides)
        return through, make_client(**env | overrides)

    return build


def sent(outbox: Path, word: str) -> int:
    """How many messages the acting tool sent with ``word`` in their text."""
    if not outbox.exists():
        return 0
    return sum(word in json.loads(line)["text"] for line in outbox.read_text().splitlines())


def users(client: FlaskClient, session_id: str, headers: dict[str, str] | None = None) -> list[Any]:
    """The session's user messages, in order ([] when it is absent)."""
    response = client.get(f"/sessions/{session_id}", headers=headers or {})
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.get_json()
    return [i["content"] for i in response.get_json()["items"] if i.get("role") == "user"]
