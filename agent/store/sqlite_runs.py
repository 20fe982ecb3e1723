"""Background runs in SQLite (``HISTORY_BACKEND=sqlite``): ``SqliteRunStore``.

The same promises as on Firestore (``run_records.py``'s header; what each operation
does: ``run_rules.py``), in three tables of the database of ``sqlite_db.py``:
``agent_runs`` (one row per run, its maps as JSON text, its state a BLOB),
``agent_run_events`` (one row per event, keyed by run and sequence number) and
``agent_session_runs`` (per session, its runs not ended as a JSON list, first in
flight). Every write is one transaction holding the database's write lock: it reads
the run (and the session's queue), applies the rule and writes the row, the events and
the queue together, so a reader sees a step's events exactly when its state is kept,
and two writers never interleave. A transaction is local: it landed or it did not, so
the lost reply that Firestore's store guards against never arises here (a repeated
call is still recognised, by the same rules). Rows go at their ``expire_at``
(``Database.purge_expired``); an expired run reads as absent before that.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.base.clock import utc_now
from agent.store import run_rules
from agent.store.run_records import CancelAction, LoggedEvent, NewEvent, Run, RunStatus
from agent.store.schema import (
    AFTER,
    CANCEL,
    CLAIM_TOKEN,
    CREATED_AT,
    DATA,
    DEADLINE,
    ERROR,
    EVENT_TYPE,
    GENERATION,
    ID,
    LEASE,
    LEASE_UNTIL,
    NEXT_RUN,
    OWNER,
    QUEUE,
    RELEASED_BY,
    REQUEST,
    RESPONSE,
    RUN_EVENTS,
    RUN_ID,
    RUN_PENDING,
    RUN_STATUS,
    RUNS,
    SEQ,
    SESSION_ID,
    SESSION_RUNS,
    STATE,
    STEP,
    TTL_FIELD,
    UPDATED_AT,
    USAGE,
)
from agent.store.sqlite_db import Database, from_micros, to_micros

_COLUMNS = (
    *(ID, SESSION_ID, OWNER, RUN_STATUS, CREATED_AT, UPDATED_AT, TTL_FIELD, DEADLINE),
    *(REQUEST, CLAIM_TOKEN, GENERATION, STEP, STATE, USAGE, SEQ, LEASE, LEASE_UNTIL),
    *(CANCEL, RESPONSE, ERROR, RUN_PENDING, AFTER, RELEASED_BY, NEXT_RUN),
)
_SELECT_RUN = f"SELECT {', '.join(_COLUMNS)} FROM {RUNS} WHERE {ID} = ?"
_UPSERT_RUN = (
    f"INSERT OR REPLACE INTO {RUNS} ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _micros(moment: dt.datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


def _json(value: Any) -> str | None:
    return None if value is None else run_rules.to_json(value)


def _row_of(run: Run) -> tuple[Any, ...]:
    return (
        *(run.run_id, run.session_id, run.owner, run.status, to_micros(run.created_at)),
        *(to_micros(run.updated_at), to_micros(run.expire_at), to_micros(run.deadline)),
        *(run_rules.to_json(run.request), run.claim_token, run.generation, run.step),
        *(run.state, run_rules.to_json(run.usage), run.seq),
        *(run.lease, _micros(run.lease_until), run.cancel, _json(run.response)),
        *(_json(run.error), _json(run.pending), run.after, run.released_by, run.next_run),
    )


def _run_of(values: tuple[Any, ...]) -> Run:
    row = dict(zip(_COLUMNS, values, strict=True))

    def loads(name: str) -> Any:
        text = row[name]
        return None if text is None else json.loads(text)

    return Run(
        run_id=row[ID],
        session_id=row[SESSION_ID],
        owner=row[OWNER],
        status=row[RUN_STATUS],
        created_at=from_micros(row[CREATED_AT]),
        updated_at=from_micros(row[UPDATED_AT]),
        expire_at=from_micros(row[TTL_FIELD]),
        deadline=from_micros(row[DEADLINE]),
        request=loads(REQUEST),
        claim_token=row[CLAIM_TOKEN],
        generation=row[GENERATION],
        step=row[STEP],
        state=None if row[STATE] is None else bytes(row[STATE]),
        usage=loads(USAGE),
        seq=row[SEQ],
        lease=row[LEASE],
        lease_until=None if row[LEASE_UNTIL] is None else from_micros(row[LEASE_UNTIL]),
        cancel=row[CANCEL],
        response=loads(RESPONSE),
        error=loads(ERROR),
        pending=loads(RUN_PENDING),
        after=row[AFTER],
        released_by=row[RELEASED_BY],
        next_run=row[NEXT_RUN],
    )


class SqliteRunStore:
    """Background runs and their event logs in SQLite. Thread-safe; synchronous."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def create(self, run: Run, first: Sequence[NewEvent], *, enqueue: bool) -> Run:
        texts = run_rules.check_events(first)
        run_rules.check_record(run)
        now = run.created_at
        with self._db.write() as conn:
            found = _read(conn, run.run_id)
            if found is not None:
                return found  # a retry of this create
            queue = _queue(conn, run.session_id)
            queue, run = run_rules.admitted(queue, run, now, enqueue=enqueue)
            run, events = run_rules.logged(run, first)
            _write_queue(conn, run.session_id, queue, run.expire_at)
            _write(conn, run, events, texts)
        return run

    def get(self, run_id: str, now: dt.datetime, owner: str | None = None) -> Run | None:
        with self._db.read() as conn:
            run = _read(conn, run_id)
        if run is None or not run_rules.is_live(run, now):
            return None
        if owner is not None and run.owner != owner:
            return None
        return run

    def take(self, run_id: str, step: int, token: str, now: dt.datetime, until: dt.datetime) -> Run:
        with self._db.write() as conn:
            run, new = run_rules.taken(_read(conn, run_id), step, token, now, until)
            run, events = run_rules.logged(run, new)
            _write(conn, run, events, run_rules.check_events(new))
        return run

    def checkpoint(
        self,
        run_id: str,
        token: str,
        now: dt.datetime,
        *,
        step: int,
        state: bytes | None,
        usage: dict[str, Any],
        events: Sequence[NewEvent],
        status: RunStatus | None = None,
        claim_token: str | None = None,
        generation: str | None = None,
    ) -> Run:
        texts = run_rules.check_events(events)
        with self._db.write() as conn:
            found = _read(conn, run_id)
            run = run_rules.checkpointed(
                found,
                token,
                now,
                step=step,
                state=state,
                usage=usage,
                status=status,
                claim_token=claim_token,
                generation=generation,
            )
            if run is None:
                assert found is not None
                return found
            run_rules.check_record(run)
            run, logged = run_rules.logged(run, events)
            _write(conn, run, logged, texts)
        return run

    def end(
        self,
        run_id: str,
        token: str | None,
        now: dt.datetime,
        *,
        status: RunStatus,
        events: Sequence[NewEvent],
        usage: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        pending: dict[str, Any] | None = None,
    ) -> tuple[Run, Run | None]:
        texts = run_rules.check_events(events)
        with self._db.write() as conn:
            found = _read(conn, run_id)
            run = run_rules.ended(
                found,
                token,
                now,
                status=status,
                usage=usage,
                response=response,
                error=error,
                pending=pending,
            )
            if run is None:  # this end landed already: the same answer
                assert found is not None
                following = _read(conn, found.next_run) if found.next_run else None
                return found, following
            run_rules.check_record(run)
            following = None
            if run.ended:
                queue, next_id = run_rules.dequeued(_queue(conn, run.session_id), run_id)
                _write_queue(conn, run.session_id, queue, None)
                following = _read(conn, next_id) if next_id else None
                run = dataclasses.replace(run, next_run=next_id)
            run, logged = run_rules.logged(run, events)
            _write(conn, run, logged, texts)
        return run, following

    def cancel(self, run_id: str, action: CancelAction, now: dt.datetime) -> Run:
        with self._db.write() as conn:
            found = _read(conn, run_id)
            run = run_rules.cancelled(found, action, now)
            if run is None:
                assert found is not None
                return found
            _write(conn, run, [], [])
        return run

    def resume(self, run_id: str, decisions: dict[str, Any], now: dt.datetime) -> Run:
        with self._db.write() as conn:
            found = _read(conn, run_id)
            decided = run_rules.resumed(found, decisions, now)
            if decided is None:
                assert found is not None
                return found
            run, new = decided
            run_rules.check_record(run)
            run, logged = run_rules.logged(run, new)
            _write(conn, run, logged, run_rules.check_events(new))
        return run

    def events(self, run_id: str, after: int, limit: int) -> list[LoggedEvent]:
        """Those of a run not expired (by the clock: the events' expiry is the run's)."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {SEQ}, {EVENT_TYPE}, {DATA} FROM {RUN_EVENTS}"
                f" WHERE {RUN_ID} = ? AND {SEQ} > ? AND {TTL_FIELD} > ? ORDER BY {SEQ} LIMIT ?",
                (run_id, after, to_micros(utc_now()), max(0, limit)),
            ).fetchall()
        return [LoggedEvent(seq=seq, type=kind, data=json.loads(data)) for seq, kind, data in rows]


def _read(conn: sqlite3.Connection, run_id: str) -> Run | None:
    found = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
    return None if found is None else _run_of(tuple(found))


def _write(
    conn: sqlite3.Connection, run: Run, events: Sequence[LoggedEvent], texts: Sequence[str]
) -> None:
    conn.execute(_UPSERT_RUN, _row_of(run))
    conn.executemany(
        f"INSERT INTO {RUN_EVENTS} ({RUN_ID}, {SEQ}, {EVENT_TYPE}, {DATA}, {TTL_FIELD})"
        " VALUES (?, ?, ?, ?, ?)",
        [
            (run.run_id, event.seq, event.type, text, to_micros(run.expire_at))
            for event, text in zip(events, texts, strict=True)
        ],
    )


def _queue(conn: sqlite3.Connection, session_id: str) -> run_rules.Queue:
    found = conn.execute(
        f"SELECT {QUEUE} FROM {SESSION_RUNS} WHERE {ID} = ?", (session_id,)
    ).fetchone()
    if found is None:
        return ()
    return tuple(
        run_rules.Queued(entry[RUN_ID], from_micros(entry[DEADLINE]))
        for entry in json.loads(found[0])
    )


def _write_queue(
    conn: sqlite3.Connection,
    session_id: str,
    queue: run_rules.Queue,
    expire_at: dt.datetime | None,
) -> None:
    """The session's queue; its expiry slides to ``expire_at`` (a new run's) if later."""
    text = json.dumps([{RUN_ID: q.run_id, DEADLINE: to_micros(q.deadline)} for q in queue])
    expiry = 0 if expire_at is None else to_micros(expire_at)
    conn.execute(
        f"INSERT INTO {SESSION_RUNS} ({ID}, {QUEUE}, {TTL_FIELD}) VALUES (?, ?, ?)"
        f" ON CONFLICT ({ID}) DO UPDATE SET {QUEUE} = excluded.{QUEUE},"
        f" {TTL_FIELD} = MAX({TTL_FIELD}, excluded.{TTL_FIELD})",
        (session_id, text, expiry),
    )
