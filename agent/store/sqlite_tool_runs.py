"""Tool runs in SQLite (``HISTORY_BACKEND=sqlite``): the same at-most-once guard as
``tool_runs.py``, one row per approved call of the table ``agent_tool_runs``, inserted
(``INSERT`` on its primary key, so once) before the call runs and marked done with its
output after. Rows go with their session's delete and at their expiry."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Sequence

from agent.store.calls import StoreUnavailable
from agent.store.schema import (
    DONE,
    ID,
    OUTPUT,
    RUNNING,
    SESSION_ID,
    STARTED_AT,
    STATE,
    TOOL_RUNS,
    TTL_FIELD,
)
from agent.store.sqlite_db import Database, to_micros
from agent.store.tool_runs import EarlierRun


class SqliteToolRunStore:
    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self._db = database
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    def start(
        self,
        session_id: str,
        generation: str,
        call_id: str,
        now: dt.datetime,
        keep_until: dt.datetime | None = None,
    ) -> EarlierRun | None:
        run_id = _run_id(session_id, generation, call_id)
        with self._db.write() as conn:
            found = conn.execute(
                f"SELECT {STATE}, {OUTPUT} FROM {TOOL_RUNS} WHERE {ID} = ?", (run_id,)
            ).fetchone()
            if found is not None:
                state, output = found
                return EarlierRun(output if state == DONE else None)
            conn.execute(
                f"INSERT INTO {TOOL_RUNS} ({ID}, {SESSION_ID}, {STATE}, {OUTPUT},"
                f" {STARTED_AT}, {TTL_FIELD}) VALUES (?, ?, ?, NULL, ?, ?)",
                (
                    run_id,
                    session_id,
                    RUNNING,
                    to_micros(now),
                    to_micros(max(now + self._ttl, keep_until or now)),
                ),
            )
        return None

    def keep(
        self, session_id: str, generation: str, call_ids: Sequence[str], until: dt.datetime
    ) -> None:
        """The records of ``call_ids`` last at least ``until`` (``tool_runs.py``)."""
        ids = [_run_id(session_id, generation, call_id) for call_id in call_ids]
        with self._db.write() as conn:
            conn.executemany(
                f"UPDATE {TOOL_RUNS} SET {TTL_FIELD} = ? WHERE {ID} = ? AND {TTL_FIELD} < ?",
                [(to_micros(until), run_id, to_micros(until)) for run_id in ids],
            )

    def forget_session(self, session_id: str, generation: str) -> None:
        prefix = _run_id(session_id, generation, "")
        with self._db.write() as conn:
            conn.execute(
                f"DELETE FROM {TOOL_RUNS} WHERE {SESSION_ID} = ? AND substr({ID}, 1, ?) = ?",
                (session_id, len(prefix), prefix),
            )

    def finish(self, session_id: str, generation: str, call_id: str, output: str) -> None:
        run_id = _run_id(session_id, generation, call_id)
        with contextlib.suppress(StoreUnavailable, sqlite3.Error), self._db.write() as conn:
            conn.execute(
                f"UPDATE {TOOL_RUNS} SET {STATE} = ?, {OUTPUT} = ? WHERE {ID} = ?",
                (DONE, output, run_id),
            )


def _run_id(session_id: str, generation: str, call_id: str) -> str:
    # The session id first: one table holds every session's runs.
    return f"{session_id}~{generation}~{call_id}"
