"""``STORE_TIMEOUT_SECONDS`` (issue 25 item 7): the store's bound under a name that fits
both backends; ``FIRESTORE_TIMEOUT_SECONDS`` stays as its older name."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent.api.app import create_app
from agent.base.settings import Settings, SettingsError
from agent.service import build_service


def test_either_name_sets_the_one_bound() -> None:
    neutral = Settings.from_env({"STORE_TIMEOUT_SECONDS": "1.5"})
    assert (neutral.store_timeout, neutral.firestore_timeout_seconds) == (1.5, 1.5)
    assert Settings.from_env({"FIRESTORE_TIMEOUT_SECONDS": "2"}).store_timeout == 2
    assert Settings.from_env({}).store_timeout == 5.0
    same = {"STORE_TIMEOUT_SECONDS": "2", "FIRESTORE_TIMEOUT_SECONDS": "2.0"}
    assert Settings.from_env(same).store_timeout == 2
    with pytest.raises(SettingsError, match="set one"):
        Settings.from_env({"STORE_TIMEOUT_SECONDS": "2", "FIRESTORE_TIMEOUT_SECONDS": "9"})
    with pytest.raises(SettingsError, match=r"^STORE_TIMEOUT_SECONDS=0\.1 is outside"):
        Settings.from_env({"STORE_TIMEOUT_SECONDS": "0.1"})


def test_it_bounds_the_sqlite_stores_wait_for_the_write_lock(
    settings_env: dict[str, str], tmp_path: Path
) -> None:
    path = str(tmp_path / "locked.sqlite3")
    env = {k: v for k, v in settings_env.items() if k != "FIRESTORE_TIMEOUT_SECONDS"}
    env |= {"HISTORY_BACKEND": "sqlite", "SQLITE_PATH": path, "STORE_TIMEOUT_SECONDS": "1"}
    service = build_service(Settings.from_env(env))
    try:
        client = create_app(service).test_client()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another writer, stuck
        try:
            started = time.monotonic()
            response = client.post("/chat", json={"message": "hi", "session_id": "x"})
            waited = time.monotonic() - started
        finally:
            other.execute("ROLLBACK")
    finally:
        service.close()
    assert response.status_code == 503, response.get_json()
    assert 0.9 < waited < 3.5  # the 1 s bound, not the 5 s default
