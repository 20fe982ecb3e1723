"""Idempotency-Key records in SQLite (``HISTORY_BACKEND=sqlite``): ``SqliteIdempotencyStore``.

The same record and promises as on Firestore (``idempotency_records.py``: fields,
replay, 409 while running, 422 for another body, lapse with the turn's claim), one row
of ``agent_idempotency`` per (principal, key), on the database of ``sqlite_db.py``. Where
Firestore conditions later writes on a document's ``update_time``, a row here carries a
``version`` that each write increments and later writes are conditioned on.

The record becomes "done" inside the turn's own commit transaction (the history
store's ``extra_writes`` hands it the connection): there is no moment at which the turn
is stored but its key is not. If the record changed meanwhile (our hold lapsed and a
retry took it over), the write matches no row and the whole turn is rolled back
(``ClaimLost``), as a failed precondition fails Firestore's commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from agent.base import errors
from agent.base.clock import retry_after, utc_now
from agent.store.calls import StoreUnavailable
from agent.store.history import ClaimLost, TurnTooLarge
from agent.store.idempotency_records import MAX_STORED_RESPONSE_BYTES, KeyClaim, StoredResponse
from agent.store.schema import (
    DONE,
    FINGERPRINT,
    GENERATION,
    ID,
    IDEMPOTENCY,
    OWNER,
    RESPONSE,
    RUNNING,
    RUNNING_UNTIL,
    SESSION_ID,
    STATE,
    TTL_FIELD,
    VERSION,
)
from agent.store.sqlite_db import Database, from_micros, to_micros

log = logging.getLogger(__name__)

_FIELDS = (OWNER, FINGERPRINT, SESSION_ID, STATE, RUNNING_UNTIL, RESPONSE, TTL_FIELD, VERSION)


class SqliteIdempotencyStore:
    """Reads and writes Idempotency-Key records in SQLite. Thread-safe; synchronous."""

    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self._db = database
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    def begin(
        self, principal: str, key: str, fingerprint: str, session_id: str, until: dt.datetime
    ) -> KeyClaim | StoredResponse:
        """Our claim to run the request, or the stored response to replay; raises
        ApiError 409 ``idempotency_key_in_progress`` / 422 ``idempotency_key_reused``,
        or StoreUnavailable."""
        now = utc_now()
        record_id = _record_id(principal, key)
        with self._db.write() as conn:
            found = conn.execute(
                f"SELECT {', '.join(_FIELDS)} FROM {IDEMPOTENCY} WHERE {ID} = ?", (record_id,)
            ).fetchone()
            fresh = {
                ID: record_id,
                OWNER: principal,
                FINGERPRINT: fingerprint,
                SESSION_ID: session_id,
                STATE: RUNNING,
                RUNNING_UNTIL: to_micros(until),
                RESPONSE: None,
                TTL_FIELD: to_micros(max(now + self._ttl, until)),
                GENERATION: None,
            }
            if found is None:
                version = 1
                conn.execute(
                    f"INSERT INTO {IDEMPOTENCY} ({', '.join(fresh)}, {VERSION})"
                    f" VALUES ({', '.join(':' + name for name in fresh)}, 1)",
                    fresh,
                )
            else:
                data = dict(zip(_FIELDS, found, strict=True))
                version = data[VERSION] + 1
                if from_micros(data[TTL_FIELD]) <= now:  # expired: as if never used
                    _update(conn, record_id, fresh | {VERSION: version})
                else:
                    if data[FINGERPRINT] != fingerprint:
                        raise errors.idempotency_key_reused()
                    if data[STATE] == DONE:
                        response = json.loads(data[RESPONSE])
                        return StoredResponse(response, from_micros(data[TTL_FIELD]))
                    running_until = from_micros(data[RUNNING_UNTIL])
                    if running_until > now:
                        raise errors.idempotency_key_in_progress(retry_after(running_until, now))
                    # The first attempt died mid-turn; its claim has lapsed like this record.
                    session_id = data[SESSION_ID]
                    lapse = {RUNNING_UNTIL: fresh[RUNNING_UNTIL], TTL_FIELD: fresh[TTL_FIELD]}
                    _update(conn, record_id, lapse | {VERSION: version})
        return KeyClaim(record_id, version, session_id)

    def completion(
        self, claim: KeyClaim, response: dict[str, Any], expire_at: dt.datetime, generation: str
    ) -> Callable[[Any], None]:
        """The write that marks the record done with ``response`` in the session life
        ``generation``, for the turn's own commit transaction. Raises TurnTooLarge when
        the response is too large to keep."""
        text = json.dumps(response)
        if len(text.encode()) > MAX_STORED_RESPONSE_BYTES:
            raise TurnTooLarge("reply too large to store for Idempotency-Key")

        def write(conn: Any) -> None:
            done = conn.execute(
                f"UPDATE {IDEMPOTENCY} SET {STATE} = ?, {RESPONSE} = ?, {TTL_FIELD} = ?,"
                f" {GENERATION} = ?, {VERSION} = {VERSION} + 1 WHERE {ID} = ? AND {VERSION} = ?",
                (DONE, text, to_micros(expire_at), generation, claim.ref, claim.update_time),
            )
            if done.rowcount != 1:
                raise ClaimLost(claim.session_id)  # rolls the whole turn back

        return write

    def abandon(self, claim: KeyClaim, time_left: float | None = None) -> None:
        """Forget a record whose turn failed, so a retry runs. Best effort (and skipped
        when ``time_left`` says no time is left): if this fails, the record lapses at
        ``running_until``. Conditioned on the record's version, as the turn left it."""
        if time_left is not None and time_left < 0.05:
            return
        with contextlib.suppress(StoreUnavailable, sqlite3.Error), self._db.write() as conn:
            conn.execute(
                f"DELETE FROM {IDEMPOTENCY} WHERE {ID} = ? AND {VERSION} = ?",
                (claim.ref, claim.update_time),
            )

    def forget_session(self, session_id: str, owner: str, generation: str | None) -> None:
        """Delete the records of a deleted session's life ``generation``. Best effort:
        expiry removes any left behind. Records of another life of the id are kept."""
        if generation is None:
            return
        try:
            with self._db.write() as conn:
                conn.execute(
                    f"DELETE FROM {IDEMPOTENCY} WHERE {SESSION_ID} = ? AND {OWNER} = ?"
                    f" AND {GENERATION} = ?",
                    (session_id, owner, generation),
                )
        except (StoreUnavailable, sqlite3.Error) as exc:
            log.warning("idempotency records of a deleted session kept: %s", type(exc).__name__)


def _update(conn: sqlite3.Connection, record_id: str, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    conn.execute(
        f"UPDATE {IDEMPOTENCY} SET {assignments} WHERE {ID} = :record_id",
        values | {"record_id": record_id},
    )


def _record_id(principal: str, key: str) -> str:
    # As on Firestore: keys of different principals never meet.
    return hashlib.sha256(f"{principal}\n{key}".encode("utf-8", "surrogateescape")).hexdigest()
