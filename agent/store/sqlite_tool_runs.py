"""Tool runs in SQLite (``HISTORY_BACKEND=sqlite``): the same at-most-once guard as
``tool_runs.py``, one row per approved call of the table ``agent_tool_runs``, inserted
(``INSERT`` on its primary key, so once) before the call runs and marked done with its
output after. The key is the same as Firestore's (the life, then a digest of the pause
and the call id, ``ToolCall.key``); the row keeps the tool and the argument digest.
Rows go with their session's delete and at their expiry."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence

from agent.store.calls import StoreUnavailable
from agent.store.schema import (
    ARGUMENTS_DIGEST,
    CALL_ID,
    DONE,
    GENERATION,
    ID,
    OUTPUT,
    RUN_PAUSE_ID,
    RUNNING,
    SESSION_ID,
    STARTED_AT,
    STATE,
    TOOL,
    TOOL_RUNS,
    TTL_FIELD,
)
from agent.store.sqlite_db import Database, to_micros
from agent.store.tool_runs import EarlierRun, ToolCall

_RECORD = f"{STATE}, {OUTPUT}, {TOOL}, {ARGUMENTS_DIGEST}"


class SqliteToolRunStore:
    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self._db = database
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    def start(
        self,
        session_id: str,
        generation: str,
        call: ToolCall,
        now: dt.datetime,
        keep_until: dt.datetime | None = None,
    ) -> EarlierRun | None:
        run_id = _run_id(session_id, call.key(generation))
        with self._db.write() as conn:
            found = conn.execute(
                f"SELECT {_RECORD} FROM {TOOL_RUNS} WHERE {ID} = ?", (run_id,)
            ).fetchone()
            if found is not None:
                return _earlier(found)
            conn.execute(
                f"INSERT INTO {TOOL_RUNS} ({ID}, {SESSION_ID}, {STATE}, {OUTPUT},"
                f" {STARTED_AT}, {TTL_FIELD}, {GENERATION}, {RUN_PAUSE_ID}, {CALL_ID},"
                f" {TOOL}, {ARGUMENTS_DIGEST}) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    session_id,
                    RUNNING,
                    to_micros(now),
                    to_micros(max(now + self._ttl, keep_until or now)),
                    generation,
                    call.pause_id,
                    call.call_id,
                    call.tool,
                    call.arguments_sha256,
                ),
            )
        return None

    def earlier(
        self, session_id: str, generation: str, calls: Sequence[ToolCall]
    ) -> dict[str, EarlierRun]:
        found: dict[str, EarlierRun] = {}
        with self._db.read() as conn:
            for call in calls:
                row = conn.execute(
                    f"SELECT {_RECORD} FROM {TOOL_RUNS} WHERE {ID} = ?",
                    (_run_id(session_id, call.key(generation)),),
                ).fetchone()
                if row is not None:
                    found[call.call_id] = _earlier(row)
        return found

    def used(self, session_id: str, generation: str, call_ids: Iterable[str]) -> set[str]:
        wanted = set(call_ids)
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {CALL_ID} FROM {TOOL_RUNS} WHERE {SESSION_ID} = ? AND {GENERATION} = ?",
                (session_id, generation),
            ).fetchall()
        return {row[0] for row in rows} & wanted

    def keep(
        self, session_id: str, generation: str, calls: Sequence[ToolCall], until: dt.datetime
    ) -> None:
        """The records of ``calls`` last at least ``until`` (``tool_runs.py``)."""
        ids = [_run_id(session_id, call.key(generation)) for call in calls]
        with self._db.write() as conn:
            conn.executemany(
                f"UPDATE {TOOL_RUNS} SET {TTL_FIELD} = ? WHERE {ID} = ? AND {TTL_FIELD} < ?",
                [(to_micros(until), run_id, to_micros(until)) for run_id in ids],
            )

    def forget_session(self, session_id: str, generation: str) -> None:
        prefix = _run_id(session_id, f"{generation}~")
        with self._db.write() as conn:
            conn.execute(
                f"DELETE FROM {TOOL_RUNS} WHERE {SESSION_ID} = ? AND substr({ID}, 1, ?) = ?",
                (session_id, len(prefix), prefix),
            )

    def finish(self, session_id: str, generation: str, call: ToolCall, output: str) -> None:
        run_id = _run_id(session_id, call.key(generation))
        with contextlib.suppress(StoreUnavailable, sqlite3.Error), self._db.write() as conn:
            conn.execute(
                f"UPDATE {TOOL_RUNS} SET {STATE} = ?, {OUTPUT} = ? WHERE {ID} = ?",
                (DONE, output, run_id),
            )


def _earlier(row: tuple[str, str | None, str | None, str | None]) -> EarlierRun:
    state, output, tool, digest = row
    return EarlierRun(output if state == DONE else None, tool or "", digest or "")


def _run_id(session_id: str, key: str) -> str:
    # The session id first: one table holds every session's runs.
    return f"{session_id}~{key}"
