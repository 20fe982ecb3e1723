"""What each principal spent per UTC day, in SQLite (``HISTORY_BACKEND=sqlite``):
``SqliteSpendStore``.

The same promises as on Firestore (``spend.py``: one row per admitted turn, held when it
is admitted and settled when it ends, apart from its commit; integer micro-dollars; a
write that is repeated writes the same row again), in the table ``agent_spend_turns`` of
the database of ``sqlite_db.py``. A hold reads the day and inserts its row in one
transaction (the write lock orders admissions). A day's spend is one ``SUM`` over the
principal's rows of the day (an index on owner and day). Rows go when their
``expire_at`` (two days after the day ends) passes (``Database.purge_expired``). The
older per-day table ``agent_spend`` is left unused.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from agent.store.schema import (
    CALLS,
    COST_MICROS,
    DAY,
    HELD_MICROS,
    ID,
    OWNER,
    SPEND_TURNS,
    TTL_FIELD,
)
from agent.store.spend import DaySpend, day_key, expiry_of, principal_hash, usd
from agent.store.sqlite_db import Database, to_micros


class SqliteSpendStore:
    """Reads and records principals' daily spend in SQLite. Thread-safe; synchronous."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def charged(self, principal: str, day: dt.date) -> DaySpend:
        with self._db.read() as conn:
            return self._charged(conn, principal, day)

    @staticmethod
    def _charged(conn: sqlite3.Connection, principal: str, day: dt.date) -> DaySpend:
        cost, held = conn.execute(
            f"SELECT SUM({COST_MICROS}), SUM({HELD_MICROS}) FROM {SPEND_TURNS}"
            f" WHERE {OWNER} = ? AND {DAY} = ?",
            (principal, day_key(day)),
        ).fetchone()
        return DaySpend(int(cost or 0), int(held or 0))

    def spent(self, principal: str, day: dt.date) -> float:
        return usd(self.charged(principal, day).cost_micros)

    def hold(self, principal: str, day: dt.date, turn: str, micros: int) -> DaySpend:
        """The day before this hold and the hold itself, in one transaction: SQLite's
        write lock orders admissions exactly."""
        with self._db.write() as conn:
            before = self._charged(conn, principal, day)
            self._insert(conn, principal, day, turn, held=micros, cost=0, calls=0)
        return before

    def settle(self, principal: str, day: dt.date, turn: str, cost_micros: int, calls: int) -> None:
        self._write(principal, day, turn, held=0, cost=cost_micros, calls=calls)

    def _write(
        self, principal: str, day: dt.date, turn: str, *, held: int, cost: int, calls: int
    ) -> None:
        with self._db.write() as conn:
            self._insert(conn, principal, day, turn, held=held, cost=cost, calls=calls)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        principal: str,
        day: dt.date,
        turn: str,
        *,
        held: int,
        cost: int,
        calls: int,
    ) -> None:
        row_id = f"{principal_hash(principal)}_{day_key(day)}_{turn}"
        conn.execute(
            f"INSERT OR REPLACE INTO {SPEND_TURNS}"
            f" ({ID}, {OWNER}, {DAY}, {HELD_MICROS}, {COST_MICROS}, {CALLS}, {TTL_FIELD})"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row_id, principal, day_key(day), held, cost, calls, to_micros(expiry_of(day))),
        )
