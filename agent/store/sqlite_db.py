"""The SQLite database behind ``HISTORY_BACKEND=sqlite``: one file (or ``:memory:``).

Why it exists: the service must run and be tested on a machine without Firestore's
emulator (which needs the Cloud SDK and Java). It is the standard library's ``sqlite3``:
nothing to install. It is never the deployed store: Cloud Functions instances share no
disk, so settings refuse it where ``K_SERVICE`` is set.

Layout
------
The tables of ``schema.SQLITE_TABLES``: ``agent_sessions`` (one row per conversation:
owner, counts, claim, generation, running summary, token ratio, usage totals as JSON,
times), ``agent_history_items`` (one row per history item, keyed by session and sequence
number), ``agent_idempotency`` (one row per Idempotency-Key, with a ``version`` that later
writes are conditioned on) and ``agent_spend`` (one row per principal and UTC day:
``sqlite_spend.py``), and the tables of the tool runs, the spend per turn and the
background runs (``sqlite_tool_runs.py``, ``sqlite_spend.py``, ``sqlite_runs.py``).
Times are integer microseconds since the epoch.
``PRAGMA user_version`` holds ``SQLITE_SCHEMA_VERSION``. A file of an older version with a
migration (``schema.SQLITE_MIGRATIONS``: version 2 gains the usage column and the spend
table, version 6 the run tables) is upgraded when opened, in one transaction; any other
version is refused with the reason, never misread.

Size bounds
-----------
SQLite has no per-document limit; the backends share the service's own: one turn adds
at most ``MAX_TURN_BYTES`` (3 MiB) and a stored response is at most
``MAX_STORED_RESPONSE_BYTES``. A history costs about its JSON size on disk; loading it
reads its rows, in order, from one index.

Consistency
-----------
* Every write is one transaction begun with ``BEGIN IMMEDIATE``, which takes the
  database's write lock at once: read-check-write sequences (claim, commit, delete,
  an idempotency record's takeover) cannot interleave, in this process or another on
  the same file. Reads run in a deferred transaction: one consistent snapshot.
* WAL journal mode: readers never wait for the writer, and a writer waits for another
  writer at most ``busy_timeout`` (the store's timeout, ``STORE_TIMEOUT_SECONDS``);
  past it, or on a disk error, the call raises ``StoreUnavailable`` (503), as a
  Firestore outage does. Within a process one connection is shared under a lock whose
  wait is bounded by the same timeout.
* ``synchronous=NORMAL``: in WAL mode a committed turn survives the process crashing;
  only a power loss can take back the last transactions (a developer's machine).

Privacy
-------
The file holds message text, so it is the owner's alone whatever the umask: a directory
the store creates is 0700, and the database is created (or tightened) to 0600 before
SQLite opens it. SQLite gives the ``-wal`` and ``-shm`` files it creates the database
file's own permissions (it chmods them past the umask), so they are 0600 too; leftovers
of an earlier run are tightened as well.

Expiry
------
Reads treat an expired session (and an expired key) as absent, exactly as on Firestore.
Rows past their expiry are also deleted, at most once a minute per process, by the next
claim (``purge_expired``): an expired session whose claim still runs is kept until the
claim lapses, so a turn that took an expired id over never loses its row mid-turn.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from agent.store.calls import StoreUnavailable
from agent.store.schema import (
    CLAIM_UNTIL,
    DONE,
    HISTORY_ITEMS,
    ID,
    IDEMPOTENCY,
    RUN_EVENTS,
    RUNNING_UNTIL,
    RUNS,
    SESSION_ID,
    SESSION_RUNS,
    SESSIONS,
    SPEND,
    SPEND_TURNS,
    SQLITE_MIGRATIONS,
    SQLITE_SCHEMA_VERSION,
    SQLITE_TABLES,
    STATE,
    TOOL_RUNS,
    TTL_FIELD,
)

MEMORY = ":memory:"
PURGE_INTERVAL_SECONDS = 60.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
# SQLite result codes that mean "not now" (another writer, the disk), not a bug here.
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN")


def _migratable(version: int) -> bool:
    """A file of ``version`` can be brought to SQLITE_SCHEMA_VERSION step by step."""
    return all(v in SQLITE_MIGRATIONS for v in range(version, SQLITE_SCHEMA_VERSION)) and (
        version <= SQLITE_SCHEMA_VERSION
    )


def _make_private(path: str) -> None:
    """Create the database file 0600 (and its directory 0700 when it is missing), and
    tighten an existing file and its ``-wal``/``-shm`` leftovers to 0600. A directory
    that already exists is the owner's choice (it may be /tmp) and is left alone."""
    folder = Path(path).parent
    if not folder.is_dir():
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True, mode=0o700)
            folder.chmod(0o700)  # mkdir's mode passes through the umask
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


def to_micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> dt.datetime:
    return _EPOCH + micros * _MICROSECOND


class Database:
    """One SQLite database, shared by the history and idempotency stores of a process.
    Thread-safe: one connection, used under a lock."""

    def __init__(self, path: str, *, timeout_seconds: float) -> None:
        self.path = path
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._next_purge = 0.0
        if path != MEMORY:
            _make_private(path)
        with self._unavailable_on_busy():
            self._conn = sqlite3.connect(
                path, timeout=timeout_seconds, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_seconds * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")  # stays "memory" for :memory:
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("BEGIN IMMEDIATE")
            (version,) = self._conn.execute("PRAGMA user_version").fetchone()
            tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables and not _migratable(version):
                self._conn.execute("ROLLBACK")
                self._conn.close()
                raise RuntimeError(
                    f"{path}: SQLite history of schema version {version}, this code needs"
                    f" {SQLITE_SCHEMA_VERSION}; move the file away (or set SQLITE_PATH)"
                )
            # One transaction (not executescript, which commits first): an upgrade
            # that fails halfway leaves the file at its old version, as it was.
            while tables and version < SQLITE_SCHEMA_VERSION:
                for statement in SQLITE_MIGRATIONS[version]:
                    self._conn.execute(statement)
                version += 1
            for statement in SQLITE_TABLES.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock; commits when the
        block ends, rolls back when it raises."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot, never waiting for writers."""
        with self._transaction("BEGIN") as conn:
            yield conn

    def purge_expired(self, now: dt.datetime) -> None:
        """Delete sessions, their items and keys past their expiry (and past any claim
        on them); at most once per PURGE_INTERVAL_SECONDS per process. Best effort."""
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
        at = to_micros(now)
        dead = f"{TTL_FIELD} <= :at AND ({CLAIM_UNTIL} IS NULL OR {CLAIM_UNTIL} <= :at)"
        with contextlib.suppress(StoreUnavailable), self.write() as conn:
            conn.execute(
                f"DELETE FROM {HISTORY_ITEMS} WHERE {SESSION_ID} IN"
                f" (SELECT {ID} FROM {SESSIONS} WHERE {dead})",
                {"at": at},
            )
            conn.execute(f"DELETE FROM {SESSIONS} WHERE {dead}", {"at": at})
            conn.execute(
                f"DELETE FROM {IDEMPOTENCY} WHERE {TTL_FIELD} <= :at"
                f" AND ({STATE} = :done OR {RUNNING_UNTIL} <= :at)",
                {"at": at, "done": DONE},
            )
            conn.execute(f"DELETE FROM {TOOL_RUNS} WHERE {TTL_FIELD} <= :at", {"at": at})
            conn.execute(f"DELETE FROM {SPEND} WHERE {TTL_FIELD} <= :at", {"at": at})
            conn.execute(f"DELETE FROM {SPEND_TURNS} WHERE {TTL_FIELD} <= :at", {"at": at})
            for table in (RUNS, RUN_EVENTS, SESSION_RUNS):
                conn.execute(f"DELETE FROM {table} WHERE {TTL_FIELD} <= :at", {"at": at})

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        if not self._lock.acquire(timeout=self._timeout):
            raise StoreUnavailable("sqlite: this process's connection stayed busy")
        try:
            # Busy and disk errors anywhere in the transaction, the caller's statements
            # included, are an unavailable store; anything else is a bug and stays one.
            with self._unavailable_on_busy():
                self._conn.execute(begin)
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                    raise
        finally:
            self._lock.release()

    @staticmethod
    @contextlib.contextmanager
    def _unavailable_on_busy() -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name.startswith(_UNAVAILABLE):
                raise StoreUnavailable(f"sqlite: {name}") from exc
            raise
