"""What each principal spent per UTC day, in SQLite (``HISTORY_BACKEND=sqlite``):
``SqliteSpendStore``.

The same promises as on Firestore (``spend.py``: the spend lands with the turn's commit
and only with it; the overshoot bound), one row of ``agent_spend`` per (principal, day),
on the database of ``sqlite_db.py``. No shards: SQLite has no per-document write rate,
and its write lock orders every transaction anyway, so a turn's
``INSERT ... ON CONFLICT DO UPDATE SET cost_usd = cost_usd + ?`` inside the turn's own
commit transaction neither conflicts nor loses a concurrent turn's cost. Rows go when
their ``expire_at`` (two days after the day ends) passes (``Database.purge_expired``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from agent.store.schema import COST_USD, DAY, OWNER, SPEND, TTL_FIELD
from agent.store.spend import day_key, expiry_of
from agent.store.sqlite_db import Database, to_micros


class SqliteSpendStore:
    """Reads and records principals' daily spend in SQLite. Thread-safe; synchronous."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def spent(self, principal: str, day: dt.date) -> float:
        """US dollars the principal's committed turns of ``day`` cost."""
        with self._db.read() as conn:
            found = conn.execute(
                f"SELECT {COST_USD} FROM {SPEND} WHERE {OWNER} = ? AND {DAY} = ?",
                (principal, day_key(day)),
            ).fetchone()
        return 0.0 if found is None else round(float(found[0]), 8)

    def recording(self, principal: str, day: dt.date, cost_usd: float) -> Callable[[Any], None]:
        """The write that adds ``cost_usd`` to the principal's spend of ``day``, for the
        turn's own commit transaction (``conn`` is its connection)."""

        def write(conn: Any) -> None:
            conn.execute(
                f"INSERT INTO {SPEND} ({OWNER}, {DAY}, {COST_USD}, {TTL_FIELD})"
                " VALUES (?, ?, ?, ?)"
                f" ON CONFLICT ({OWNER}, {DAY}) DO UPDATE SET"
                f" {COST_USD} = {COST_USD} + excluded.{COST_USD}",
                (principal, day_key(day), cost_usd, to_micros(expiry_of(day))),
            )

        return write
