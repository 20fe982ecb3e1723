"""The history store under test, whichever backend it is: which one the tests use, and
reading what a service stored (its Idempotency-Key records, a session's expiry) without
going through the API."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs

from agent.service import Service
from agent.store.schema import (
    FINGERPRINT,
    GENERATION,
    ID,
    IDEMPOTENCY,
    OWNER,
    RESPONSE,
    RUNNING_UNTIL,
    SESSION_ID,
    SESSIONS,
    STATE,
    TTL_FIELD,
)
from agent.store.sqlite_db import from_micros
from local.emulators import firestore_emulator_missing


def backend_under_test() -> str:
    """``firestore`` or ``sqlite``: the store the tests' services use.
    ``TEST_HISTORY_BACKEND`` chooses; unset, Firestore when its emulator is installed
    (or REQUIRE_FIRESTORE_EMULATOR=1), else SQLite."""
    chosen = os.environ.get("TEST_HISTORY_BACKEND", "").strip()
    if chosen:
        if chosen not in ("firestore", "sqlite"):
            raise pytest.UsageError("TEST_HISTORY_BACKEND must be firestore or sqlite")
        return chosen
    if os.environ.get("REQUIRE_FIRESTORE_EMULATOR") == "1":
        return "firestore"
    return "sqlite" if firestore_emulator_missing() else "firestore"


def service_of(client: FlaskClient) -> Service:
    service: Service = client.application.extensions["agent.service"]
    return service


def _sqlite(client: FlaskClient) -> sqlite3.Connection | None:
    settings = service_of(client).settings
    return sqlite3.connect(settings.sqlite_path) if settings.history_backend == "sqlite" else None


def idempotency_records(client: FlaskClient) -> list[dict[str, Any]]:
    """Every Idempotency-Key record the client's service stored, as Firestore's fields."""
    conn = _sqlite(client)
    if conn is None:
        return [s.to_dict() or {} for s in fs.Client().collection(IDEMPOTENCY).stream()]
    names = (OWNER, FINGERPRINT, SESSION_ID, STATE, RUNNING_UNTIL, RESPONSE, TTL_FIELD)
    names = (*names, GENERATION)
    with conn:
        rows = conn.execute(f"SELECT {', '.join(names)} FROM {IDEMPOTENCY}").fetchall()
    conn.close()
    records = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        record[RUNNING_UNTIL] = from_micros(record[RUNNING_UNTIL])
        record[TTL_FIELD] = from_micros(record[TTL_FIELD])
        record[RESPONSE] = json.loads(record[RESPONSE]) if record[RESPONSE] else None
        if record[GENERATION] is None:
            del record[GENERATION]  # as on Firestore: set only when done
        records.append(record)
    return records


def session_expiry(client: FlaskClient, session_id: str) -> dt.datetime:
    """The stored expire_at of a session, read from the store itself."""
    conn = _sqlite(client)
    if conn is None:
        data = fs.Client().collection(SESSIONS).document(session_id).get().to_dict() or {}
        expire_at: dt.datetime = data[TTL_FIELD]
        return expire_at
    with conn:
        (micros,) = conn.execute(
            f"SELECT {TTL_FIELD} FROM {SESSIONS} WHERE {ID} = ?", (session_id,)
        ).fetchone()
    conn.close()
    return from_micros(micros)
