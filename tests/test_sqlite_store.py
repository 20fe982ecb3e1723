"""What only the SQLite store has to prove (its shared promises are
``test_store_contract.py``'s): two processes on one file lose no turn and never both
win a claim, expired rows are deleted, a database another process keeps locked is a
503 within the timeout, ``:memory:`` works, and the deployed function refuses it."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from agent.base.clock import utc_now
from agent.base.settings import Settings, SettingsError
from agent.store.calls import StoreUnavailable
from agent.store.history import SessionBusy, UsageTotals
from agent.store.schema import (
    HISTORY_ITEMS,
    IDEMPOTENCY,
    SESSIONS,
    SQLITE_SCHEMA_VERSION,
    SUMMARY_PROVENANCE,
)
from agent.store.sqlite_db import Database, to_micros
from agent.store.sqlite_history import SqliteHistoryStore
from agent.store.sqlite_idempotency import SqliteIdempotencyStore
from agent.store.sqlite_spend import SqliteSpendStore
from agent.store.sqlite_tool_runs import SqliteToolRunStore
from agent.store.tool_runs import ToolCall
from tests.support.constants import REPO_ROOT
from tests.support.openapi_contract import assert_conforms

SECOND = dt.timedelta(seconds=1)

# One process's share of the work: TURNS turns on the shared session, each holding its
# claim a few milliseconds (a turn's run) and retried while the other process holds it.
# Prints the claims it lost to the other, and when its turns began and ended.
WORKER = """
import datetime, sys, time
from agent.base.clock import utc_now
from agent.store.history import SessionBusy
from agent.store.sqlite_db import Database
from agent.store.sqlite_history import SqliteHistoryStore
store = SqliteHistoryStore(Database(sys.argv[1], timeout_seconds=5), ttl_seconds=600)
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # both start together
busy, began = 0, time.time()
for n in range(int(sys.argv[3])):
    while True:
        now = utc_now()
        try:
            claim = store.claim("shared", now, now + datetime.timedelta(seconds=5))
        except SessionBusy:
            busy += 1
            time.sleep(0.001)
            continue
        time.sleep(0.003)
        store.commit(claim, [{"role": "user", "content": f"{sys.argv[2]}-{n}"}], utc_now())
        break
print(busy, began, time.time())
"""


def test_two_processes_on_one_file_lose_no_turn(tmp_path: Path) -> None:
    path, turns = str(tmp_path / "shared.sqlite3"), 150
    Database(path, timeout_seconds=5).close()  # the tables exist before the race
    start_at = time.time() + 3  # after both have imported
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, path, name, str(turns), str(start_at)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    reports = [w.communicate(timeout=120)[0].split() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    history = SqliteHistoryStore(Database(path, timeout_seconds=5), ttl_seconds=600).load(
        "shared", utc_now()
    )
    assert history is not None and history.turns == 2 * turns
    for name in ("a", "b"):  # none lost, duplicated or reordered
        mine = [i["content"] for i in history.items if i["content"].startswith(name)]
        assert mine == [f"{name}-{n}" for n in range(turns)]
    # A commit by a process whose claim was not its own would have raised ClaimLost and
    # failed the worker. Where the two ran side by side, they did refuse each other.
    (busy_a, began_a, ended_a), (busy_b, began_b, ended_b) = (map(float, r) for r in reports)
    if min(ended_a, ended_b) - max(began_a, began_b) > 0.5:
        assert busy_a + busy_b > 0


def test_expired_rows_are_deleted(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    database = Database(path, timeout_seconds=3)
    history = SqliteHistoryStore(database, ttl_seconds=1)
    keys = SqliteIdempotencyStore(database, ttl_seconds=1)
    now = utc_now()
    for session_id in ("old", "held"):
        history.commit(history.claim(session_id, now, now + SECOND), [{"content": "x"}], now)
    keys.begin("p", "k", "fp", "old", now + SECOND)
    later = now + 3 * SECOND
    # Expired, but a turn runs on it: a new life, whose claim dropped the old items.
    history.claim("held", later, later + 10 * SECOND)
    database._next_purge = 0.0  # the next claim purges (once a minute otherwise)
    history.claim("new", later, later + 10 * SECOND)
    with sqlite3.connect(path) as conn:
        sessions = {row[0] for row in conn.execute(f"SELECT id FROM {SESSIONS}")}
        items = {row[0] for row in conn.execute(f"SELECT session_id FROM {HISTORY_ITEMS}")}
        records = conn.execute(f"SELECT count(*) FROM {IDEMPOTENCY}").fetchone()[0]
    assert sessions == {"held", "new"} and items == set() and records == 0


def test_a_database_locked_by_another_process_is_unavailable_within_the_timeout(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "h.sqlite3")
    history = SqliteHistoryStore(Database(path, timeout_seconds=1), ttl_seconds=60)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # as another process stuck mid-write would
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            history.claim("s", utc_now(), utc_now() + SECOND)
        assert time.monotonic() - started < 3
    finally:
        other.execute("ROLLBACK")
    history.claim("s", utc_now(), utc_now() + SECOND)  # and it recovers


def test_a_locked_database_is_503_over_the_api(
    make_client: Callable[..., FlaskClient], tmp_path: Path
) -> None:
    path = str(tmp_path / "locked.sqlite3")
    client = make_client(history_backend="sqlite", sqlite_path=path, firestore_timeout_seconds=1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for method, route, body in (
            ("POST", "/chat", {"message": "hi", "session_id": "x"}),
            ("DELETE", "/sessions/x", None),
        ):
            started = time.monotonic()
            response = client.open(route, method=method, json=body)
            assert response.status_code == 503, response.get_json()
            assert response.get_json()["error"]["code"] == "storage_unavailable"
            assert time.monotonic() - started < 4
            assert_conforms(method, route, 503, response.get_json(), response.headers)
    finally:
        other.execute("ROLLBACK")
    assert client.post("/chat", json={"message": "hi", "session_id": "x"}).status_code == 200


def test_memory_database_works_across_threads() -> None:
    history = SqliteHistoryStore(Database(":memory:", timeout_seconds=3), ttl_seconds=60)
    now = utc_now()
    claim = history.claim("m", now, now + SECOND)
    with pytest.raises(SessionBusy):
        history.claim("m", now, now + SECOND)
    history.commit(claim, [{"content": "kept"}], now)
    loaded = history.load("m", now)
    assert loaded is not None and loaded.items == [{"content": "kept"}]


def test_wal_mode_and_busy_timeout_are_set(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite3")
    Database(path, timeout_seconds=2).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_deployed_function_refuses_sqlite() -> None:
    with pytest.raises(SettingsError, match="HISTORY_BACKEND=sqlite refused"):
        Settings.from_env({"HISTORY_BACKEND": "sqlite", "K_SERVICE": "agent"})
    with pytest.raises(SettingsError, match="HISTORY_BACKEND must be"):
        Settings.from_env({"HISTORY_BACKEND": "postgres"})
    assert Settings.from_env({}).history_backend == "firestore"


def test_a_file_of_another_schema_version_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the tables of version 1: no generation column
        conn.execute("CREATE TABLE agent_sessions (id TEXT PRIMARY KEY)")
    conn.close()
    needs = f"schema version 0, this code needs {SQLITE_SCHEMA_VERSION}"
    with pytest.raises(RuntimeError, match=needs):
        Database(str(path), timeout_seconds=3)
    fresh = Database(str(tmp_path / "new.sqlite3"), timeout_seconds=3)
    fresh.close()
    Database(str(tmp_path / "new.sqlite3"), timeout_seconds=3).close()  # its own version: fine


V2_SESSIONS = """
CREATE TABLE agent_sessions (
    id TEXT PRIMARY KEY, owner TEXT, turns INTEGER NOT NULL, items INTEGER NOT NULL,
    bytes INTEGER NOT NULL, claim_token TEXT, claim_until INTEGER, generation TEXT NOT NULL,
    summary TEXT, summary_items INTEGER NOT NULL DEFAULT 0,
    summary_offset INTEGER NOT NULL DEFAULT 0, token_ratio REAL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, expire_at INTEGER NOT NULL
);
CREATE TABLE agent_history_items (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""
"""Version 2's tables as that release created them (before usage totals and spend)."""


def test_a_version_2_file_is_upgraded_in_place_and_keeps_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    now = utc_now()
    micros = to_micros(now)
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_SESSIONS)
        conn.execute(
            "INSERT INTO agent_sessions (id, owner, turns, items, bytes, generation,"
            " created_at, updated_at, expire_at) VALUES ('s', 'alice', 1, 1, 10, 'g1', ?, ?, ?)",
            (micros, micros, micros + 3_600_000_000),
        )
        conn.execute("INSERT INTO agent_history_items VALUES ('s', 0, '{\"role\":\"user\"}')")
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    database = Database(str(path), timeout_seconds=3)
    store = SqliteHistoryStore(database, ttl_seconds=3600)
    spend = SqliteSpendStore(database)
    loaded = store.load("s", now, "alice")
    assert loaded is not None and loaded.items == [{"role": "user"}]
    assert loaded.totals == UsageTotals()  # written before totals: none yet
    claim = store.claim("s", now, now + dt.timedelta(seconds=10), "alice")
    totals = UsageTotals(1, 100, 0, 10, 0.5)
    store.commit(claim, [{"role": "assistant"}], now, totals=totals)
    spend.hold("alice", now.date(), "t1", 1_000_000)
    spend.settle("alice", now.date(), "t1", 500_000, 1)
    loaded = store.load("s", now, "alice")
    assert loaded is not None and loaded.totals == totals and loaded.turns == 2
    assert spend.spent("alice", now.date()) == 0.5
    database.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SQLITE_SCHEMA_VERSION,)
    conn.close()
    Database(str(path), timeout_seconds=3).close()  # opened again: already current


def test_a_version_4_file_gets_the_tool_run_table_keyed_on_the_pause(tmp_path: Path) -> None:
    """Issue 20 item 6: version 4's rows were keyed on the call id alone; the upgrade
    makes the table again with the pause, call id, tool and argument digest."""
    path = tmp_path / "v4.sqlite3"
    Database(str(path), timeout_seconds=3).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE agent_tool_runs")
        conn.execute(f"ALTER TABLE agent_sessions DROP COLUMN {SUMMARY_PROVENANCE}")  # 6's
        conn.execute(
            "CREATE TABLE agent_tool_runs (id TEXT PRIMARY KEY, session_id TEXT NOT NULL,"
            " state TEXT NOT NULL, output TEXT, started_at INTEGER NOT NULL,"
            " expire_at INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO agent_tool_runs VALUES ('s~g~call_1', 's', 'done', 'x', 0, 0)")
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    database = Database(str(path), timeout_seconds=3)
    runs = SqliteToolRunStore(database, ttl_seconds=60)
    call = ToolCall("p1", "call_1", "send_message", "d")
    assert runs.start("s", "g", call, utc_now()) is None
    assert runs.used("s", "g", ["call_1"]) == {"call_1"}
    database.close()
    Database(str(path), timeout_seconds=3).close()  # opened again: already the newest


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_history_and_the_outbox_are_the_owners_alone_whatever_the_umask(
    make_client: Callable[..., FlaskClient], tmp_path: Path, umask: int
) -> None:
    """They hold message text: directory 0700, database, -wal, -shm and outbox 0600."""
    folder = tmp_path / "private"
    path, outbox = folder / "history.sqlite3", tmp_path / "outbox.jsonl"
    old = os.umask(umask)
    try:
        client = make_client(
            history_backend="sqlite", sqlite_path=str(path), outbox_path=str(outbox)
        )
        response = client.post(
            "/chat", json={"message": 'send "hi there" to alice', "session_id": "p"}
        )
        assert response.status_code == 200, response.get_json()
        [call] = response.get_json()["pending_approvals"]
        pause_id = response.get_json()["pause_id"]
        response = client.post(
            "/sessions/p/approvals",
            json={
                "pause_id": pause_id,
                "decisions": [{"call_id": call["call_id"], "approve": True}],
            },
        )
        assert response.status_code == 200, response.get_json()
    finally:
        os.umask(old)
    assert "hi there" in outbox.read_text()  # the tool did write it
    modes = {
        name: stat.S_IMODE(os.stat(name).st_mode)
        for name in (folder, path, f"{path}-wal", f"{path}-shm", outbox)
    }
    assert modes == {
        folder: 0o700,
        path: 0o600,
        f"{path}-wal": 0o600,
        f"{path}-shm": 0o600,
        outbox: 0o600,
    }


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.write_bytes(b"")
        name.chmod(0o644)
    Database(str(path), timeout_seconds=3).close()
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if name.exists():  # SQLite removes empty leftovers when it closes
            assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
