"""Conversation histories in SQLite (``HISTORY_BACKEND=sqlite``): ``SqliteHistoryStore``.

The same promises as the Firestore store (``history.py``), kept with SQLite
transactions on the database of ``sqlite_db.py`` (whose header states the layout, size
bounds, locking and expiry):

* A turn claims its session first: in one write transaction, read the row, refuse
  (``SessionBusy`` with the seconds left, or ``SessionTaken`` for another owner's live
  session), and write a fresh ``claim_token`` with ``claim_until`` (the turn's deadline).
  The write lock makes two claims strictly ordered, so exactly one wins and the other is
  refused at once; nobody waits for a turn to finish. A claim lapses at ``claim_until``,
  so a crashed process never locks a session for good.
* A turn's items are written in one transaction, together with the session's counts,
  the claim's release and the caller's ``extra_writes`` (the Idempotency-Key record),
  only if the row still holds this turn's ``claim_token``: if the claim lapsed and
  another turn took the session, or it was deleted, nothing is written (``ClaimLost``).
  A failed run writes nothing and leaves the history exactly as it was. The
  transaction is local and atomic: it landed or it did not, so ``CommitUnknown`` and
  ``CommitFailed`` never arise here.
* Generations: a claim that starts a new life of an id (absent, expired, or a first
  turn that never committed) gives it a new random ``generation`` and drops the dead
  life's items in the same transaction; deletes report the generation they removed.
* The running summary (``summary``, ``summary_items``, ``summary_offset``), the
  session's ``token_ratio`` and its usage totals (``usage``, JSON: the claim's totals
  plus the turn's usage, as absolute values) are columns of the session row, written by
  the turn's commit. A claim loads the whole history (a local read is cheap) and hands the turn
  the items the summary does not cover, with their byte offsets in the encoded history
  (``item_ends``, as on Firestore: each item as compact JSON and a newline).
* Ownership: ``load``, ``claim`` and ``delete`` take the caller's principal, as on
  Firestore: another owner's live session is absent, cannot be deleted or claimed; an
  expired one is taken over like an absent one.
* A paused run (``paused_runs.py``) is two columns of the session row, its JSON
  (``paused``) and its compressed state (``paused_state``), written and cleared by the
  turn's commit; the decision log is the ``approvals`` column. A resume's claim counts
  itself in the paused run's ``attempts`` in the claim's transaction.
* Expiry: ``expire_at`` slides to now + ``SESSION_TTL_SECONDS`` at every commit; reads
  treat an expired session as absent, and expired rows are deleted (``purge_expired``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import sqlite3
from typing import Any

from agent.base.clock import retry_after
from agent.store.calls import StoreUnavailable
from agent.store.commit_plan import CommitPlan, PlannedCommits
from agent.store.history_types import (
    Claim,
    ClaimLost,
    Deleted,
    Deletion,
    History,
    SessionBusy,
    SessionInfo,
    SessionTaken,
    Summary,
    UsageTotals,
    new_generation,
)
from agent.store.paused_runs import Decision, PausedRun, check_claim, paused_fields, paused_from
from agent.store.schema import (
    APPROVALS,
    BYTES,
    CLAIM_TOKEN,
    CLAIM_UNTIL,
    CREATED_AT,
    GENERATION,
    HISTORY_ITEMS,
    ID,
    ITEM,
    ITEMS,
    OWNER,
    PAUSE_ATTEMPTS,
    PAUSE_STATE,
    PAUSED,
    PAUSED_AT,
    PAUSED_STATE,
    SEQ,
    SESSION_ID,
    SESSIONS,
    SUMMARY,
    SUMMARY_ITEMS,
    SUMMARY_OFFSET,
    SUMMARY_PROVENANCE,
    TOKEN_RATIO,
    TOOL_RUNS,
    TTL_FIELD,
    TURNS,
    UPDATED_AT,
    USAGE,
)
from agent.store.sqlite_db import Database, from_micros, to_micros
from agent.store.summary_provenance import SummaryProvenance

_COLUMNS = (
    *(OWNER, TURNS, ITEMS, BYTES, CLAIM_TOKEN, CLAIM_UNTIL, GENERATION),
    *(SUMMARY, SUMMARY_ITEMS, SUMMARY_OFFSET, TOKEN_RATIO, USAGE, CREATED_AT, TTL_FIELD),
    *(PAUSED, PAUSED_STATE, APPROVALS, SUMMARY_PROVENANCE),
)
_SELECT_SESSION = f"SELECT {', '.join(_COLUMNS)} FROM {SESSIONS} WHERE {ID} = ?"
_SELECT_ITEMS = f"SELECT {ITEM} FROM {HISTORY_ITEMS} WHERE {SESSION_ID} = ? ORDER BY {SEQ}"
_DELETE_ITEMS = f"DELETE FROM {HISTORY_ITEMS} WHERE {SESSION_ID} = ?"
_DELETE_TOOL_RUNS = f"DELETE FROM {TOOL_RUNS} WHERE {SESSION_ID} = ?"
_MIN_COMMIT_SECONDS = 0.05


class _Row:
    """A session row, its times as datetimes."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        named = dict(zip(_COLUMNS, values, strict=True))
        self.owner: str | None = named[OWNER]
        self.turns: int = named[TURNS]
        self.items: int = named[ITEMS]
        self.bytes: int = named[BYTES]
        self.claim_token: str | None = named[CLAIM_TOKEN]
        self.claim_until = None if named[CLAIM_UNTIL] is None else from_micros(named[CLAIM_UNTIL])
        self.generation: str = named[GENERATION]
        self.summary = (
            None
            if named[SUMMARY] is None
            else Summary(
                named[SUMMARY],
                named[SUMMARY_ITEMS],
                named[SUMMARY_OFFSET],
                SummaryProvenance.from_doc(named[SUMMARY_PROVENANCE]),
            )
        )
        self.token_ratio: float = float(named[TOKEN_RATIO] or 1.0)
        self.totals = UsageTotals.from_doc(json.loads(named[USAGE] or "null"))
        self.created_at = from_micros(named[CREATED_AT])
        self.expire_at = from_micros(named[TTL_FIELD])
        self.paused = _paused_of(named[PAUSED], named[PAUSED_STATE])
        self.approvals: tuple[Decision, ...] = tuple(json.loads(named[APPROVALS] or "[]"))

    def live(self, now: dt.datetime) -> bool:
        return self.turns > 0 and self.expire_at > now

    def owned_by(self, owner: str | None) -> bool:
        # A row without an owner (library use) belongs to no principal of the service.
        return owner is None or self.owner == owner

    def held(self, now: dt.datetime) -> bool:
        return bool(self.claim_token and self.claim_until and self.claim_until > now)


class SqliteHistoryStore(PlannedCommits):
    """Reads and writes conversation histories in SQLite. Thread-safe; synchronous."""

    def __init__(self, database: Database, *, ttl_seconds: int) -> None:
        self._db = database
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    # -- reading -------------------------------------------------------------------

    def load(self, session_id: str, now: dt.datetime, owner: str | None = None) -> History | None:
        """The live history of a session, or None when absent, expired or (with
        ``owner``) someone else's. One snapshot."""
        with self._db.read() as conn:
            row = _row(conn, session_id)
            if row is None or not row.live(now) or not row.owned_by(owner):
                return None
            items = [json.loads(text) for text in _texts(conn, session_id)]
        return History.of(
            session_id,
            items,
            row.turns,
            row.expire_at,
            row.summary,
            row.paused,
            row.approvals,
            row.totals,
        )

    def paused_run(
        self, session_id: str, now: dt.datetime, owner: str | None = None
    ) -> PausedRun | None:
        """The live session's paused run (None: absent, someone else's, not paused)."""
        with self._db.read() as conn:
            row = _row(conn, session_id)
        if row is None or not row.live(now) or not row.owned_by(owner):
            return None
        return row.paused

    def info(self, session_id: str, now: dt.datetime) -> SessionInfo | None:
        """Owner and generation of the live session ``session_id``; None when absent or
        expired."""
        with self._db.read() as conn:
            row = _row(conn, session_id)
        if row is None or not row.live(now):
            return None
        return SessionInfo(row.owner, row.generation)

    def owner_of(self, session_id: str, now: dt.datetime) -> str | None:
        found = self.info(session_id, now)
        return found.owner if found else None

    def current_generation(self, session_id: str, now: dt.datetime) -> str | None:
        """The generation of the id's current life: a live session's, or that of a first
        turn still holding its claim; None when no life is current."""
        with self._db.read() as conn:
            row = _row(conn, session_id)
        if row is None or not (row.live(now) or row.held(now)):
            return None
        return row.generation

    # -- a turn: claim, then commit or release ---------------------------------------

    def claim(
        self,
        session_id: str,
        now: dt.datetime,
        until: dt.datetime,
        owner: str | None = None,
        *,
        resume: str | None = None,
    ) -> Claim:
        """Take the session for one turn until ``until``; raises SessionBusy, and with
        ``owner`` SessionTaken when someone else's live session has this id; RunPaused
        and PauseChanged as on Firestore (``paused_runs.py``)."""
        self._db.purge_expired(now)
        token = secrets.token_urlsafe(16)
        with self._db.write() as conn:
            row = _row(conn, session_id)
            if row is not None:
                if not row.owned_by(owner) and (row.live(now) or row.held(now)):
                    raise SessionTaken("the id names a live session of another principal")
                if row.held(now):
                    assert row.claim_until is not None
                    raise SessionBusy(retry_after(row.claim_until, now))
            paused = row.paused if row is not None and row.live(now) else None
            check_claim(paused, resume)
            if row is None or not row.live(now):
                # A new life: a fresh row under a new generation (a dead life's row and
                # items go now). Until its first commit it expires with its claim.
                generation = new_generation()
                if row is not None:
                    conn.execute(_DELETE_ITEMS, (session_id,))
                    conn.execute(_DELETE_TOOL_RUNS, (session_id,))
                    conn.execute(f"DELETE FROM {SESSIONS} WHERE {ID} = ?", (session_id,))
                kept_owner = owner if owner is not None or row is None else row.owner
                conn.execute(
                    f"INSERT INTO {SESSIONS} ({ID}, {OWNER}, {TURNS}, {ITEMS}, {BYTES},"
                    f" {CLAIM_TOKEN}, {CLAIM_UNTIL}, {GENERATION}, {CREATED_AT},"
                    f" {UPDATED_AT}, {TTL_FIELD}) VALUES (:id, :owner, 0, 0, 0, :token,"
                    " :until, :generation, :now, :now, :until)",
                    {"id": session_id, "owner": kept_owner, "token": token}
                    | {"until": to_micros(until), "now": to_micros(now)}
                    | {"generation": generation},
                )
                return Claim(
                    session_id,
                    token,
                    token,
                    new_session=True,
                    history=[],
                    turns=0,
                    tail=b"",
                    chunks=0,
                    stale_chunks=0,
                    total_bytes=0,
                    created_at=now,
                    until=until,
                    generation=generation,
                    replaced=row is not None,
                )
            conn.execute(
                f"UPDATE {SESSIONS} SET {CLAIM_TOKEN} = ?, {CLAIM_UNTIL} = ?,"
                f" {OWNER} = COALESCE(?, {OWNER}), {TTL_FIELD} = MAX({TTL_FIELD}, ?)"
                f" WHERE {ID} = ?",
                (token, to_micros(until), owner, to_micros(until), session_id),
            )
            if paused is not None:
                # Counted in the claim's own transaction: a later resume knows this one began.
                count = {PAUSE_ATTEMPTS: paused.attempts + 1}
                conn.execute(
                    f"UPDATE {SESSIONS} SET {PAUSED} = json_patch({PAUSED}, ?) WHERE {ID} = ?",
                    (json.dumps(count), session_id),
                )
            texts = _texts(conn, session_id)
        return _live_claim(session_id, token, row, texts, until, paused)

    def reclaim(
        self, session_id: str, token: str, now: dt.datetime, owner: str | None = None
    ) -> Claim:
        """The claim ``token`` still holds (unexpired), taken up again with the session
        as it is now: what a background run's later slice continues (nobody else writes
        a held session). Reads only; raises ClaimLost when the token holds it no more."""
        with self._db.read() as conn:
            row = _row(conn, session_id)
            if row is None or row.claim_token != token or not row.held(now):
                raise ClaimLost(session_id)
            if not row.owned_by(owner):
                raise ClaimLost(session_id)
            texts = _texts(conn, session_id) if row.live(now) else []
        assert row.claim_until is not None
        if not row.live(now):  # a new life's first turn: nothing committed yet
            return Claim(
                session_id,
                token,
                token,
                new_session=True,
                history=[],
                turns=0,
                tail=b"",
                chunks=0,
                stale_chunks=0,
                total_bytes=0,
                created_at=row.created_at,
                until=row.claim_until,
                generation=row.generation,
            )
        return _live_claim(session_id, token, row, texts, row.claim_until, row.paused)

    def _apply(self, plan: CommitPlan, time_left: float | None) -> History:
        """The commit ``plan`` as one transaction, only while the row still holds its
        claim (ClaimLost otherwise: nothing written). With too little ``time_left`` the
        claim is left to lapse unused, as on Firestore."""
        claim = plan.claim
        if time_left is not None and time_left < _MIN_COMMIT_SECONDS:
            raise ClaimLost(claim.session_id)
        kept = plan.summary
        with self._db.write() as conn:
            found = conn.execute(
                f"SELECT {CLAIM_TOKEN}, {GENERATION} FROM {SESSIONS} WHERE {ID} = ?",
                (claim.session_id,),
            ).fetchone()
            if found is None or tuple(found) != (claim.token, claim.generation):
                raise ClaimLost(claim.session_id)
            if plan.replace:
                conn.execute(_DELETE_ITEMS, (claim.session_id,))
            conn.executemany(
                f"INSERT INTO {HISTORY_ITEMS} ({SESSION_ID}, {SEQ}, {ITEM}) VALUES (?, ?, ?)",
                [
                    (claim.session_id, plan.first_item + n, line)
                    for n, line in enumerate(plan.lines)
                ],
            )
            conn.execute(
                f"UPDATE {SESSIONS} SET {TURNS} = :turns, {ITEMS} = :items, {BYTES} = :bytes,"
                f" {CLAIM_TOKEN} = NULL, {CLAIM_UNTIL} = NULL, {CREATED_AT} = :created,"
                f" {SUMMARY} = :summary, {SUMMARY_ITEMS} = :summary_items,"
                f" {SUMMARY_OFFSET} = :summary_offset,"
                f" {SUMMARY_PROVENANCE} = :summary_provenance,"
                f" {TOKEN_RATIO} = COALESCE(:ratio, {TOKEN_RATIO}),"
                f" {PAUSED} = :paused, {PAUSED_STATE} = :paused_state, {APPROVALS} = :approvals,"
                f" {USAGE} = COALESCE(:usage, {USAGE}),"
                f" {UPDATED_AT} = :now, {TTL_FIELD} = :expire WHERE {ID} = :id",
                {"turns": plan.turns, "items": plan.items, "bytes": plan.total_bytes}
                | {"created": to_micros(claim.created_at), "ratio": plan.token_ratio}
                | {"usage": None if plan.totals is None else json.dumps(plan.totals.as_doc())}
                | {"summary": kept.text if kept else None}
                | {"summary_items": kept.items if kept else 0}
                | {"summary_offset": kept.offset if kept else 0}
                | {"summary_provenance": _provenance_text(kept)}
                | _paused_columns(plan.paused)
                | {"approvals": json.dumps(plan.approvals) if plan.approvals else None}
                | {"now": to_micros(plan.now), "expire": to_micros(plan.expire_at)}
                | {"id": claim.session_id},
            )
            if plan.extra_writes is not None:
                plan.extra_writes(conn, plan.expire_at)
        return plan.stored

    def release(self, claim: Claim) -> None:
        """Give the session back after a failed turn; the history stays untouched.
        Best effort: if this fails too, the claim lapses at its deadline."""
        ours = f"{ID} = ? AND {CLAIM_TOKEN} = ?"
        if claim.turns == 0:  # the placeholder row of a new life's first turn goes
            statement = f"DELETE FROM {SESSIONS} WHERE {ours}"
        else:
            statement = (
                f"UPDATE {SESSIONS} SET {CLAIM_TOKEN} = NULL, {CLAIM_UNTIL} = NULL WHERE {ours}"
            )
        with contextlib.suppress(StoreUnavailable, sqlite3.Error), self._db.write() as conn:
            conn.execute(statement, (claim.session_id, claim.token))

    # -- deleting ----------------------------------------------------------------

    def delete(self, session_id: str, now: dt.datetime, owner: str | None = None) -> Deleted:
        """Delete a session and its items (an expired one's too), unless ``owner`` is
        given and someone else owns it. Raises SessionBusy while a turn holds it."""
        with self._db.write() as conn:
            row = _row(conn, session_id)
            if row is None:
                return Deleted(Deletion.ABSENT)
            if not row.owned_by(owner):
                return Deleted(Deletion.NOT_YOURS)
            if row.held(now):
                assert row.claim_until is not None
                raise SessionBusy(retry_after(row.claim_until, now))
            conn.execute(_DELETE_ITEMS, (session_id,))
            conn.execute(_DELETE_TOOL_RUNS, (session_id,))
            conn.execute(f"DELETE FROM {SESSIONS} WHERE {ID} = ?", (session_id,))
        outcome = Deletion.DELETED if row.live(now) else Deletion.ABSENT
        return Deleted(outcome, row.generation)


def _row(conn: sqlite3.Connection, session_id: str) -> _Row | None:
    found = conn.execute(_SELECT_SESSION, (session_id,)).fetchone()
    return None if found is None else _Row(tuple(found))


def _texts(conn: sqlite3.Connection, session_id: str) -> list[str]:
    return [text for (text,) in conn.execute(_SELECT_ITEMS, (session_id,))]


def _paused_columns(paused: PausedRun | None) -> dict[str, Any]:
    if paused is None:
        return {"paused": None, "paused_state": None}
    fields = paused_fields(paused)
    del fields[PAUSE_STATE]
    fields[PAUSED_AT] = to_micros(paused.paused_at)
    return {"paused": json.dumps(fields), "paused_state": paused.state}


def _paused_of(text: str | None, state: bytes | None) -> PausedRun | None:
    if text is None:
        return None
    fields = json.loads(text)
    fields[PAUSED_AT] = from_micros(fields[PAUSED_AT])
    fields[PAUSE_STATE] = state or b""
    return paused_from(fields)


def _provenance_text(summary: Summary | None) -> str | None:
    if summary is None or summary.provenance is None:
        return None
    return summary.provenance.as_text()


def _live_claim(
    session_id: str,
    token: str,
    row: _Row,
    texts: list[str],
    until: dt.datetime,
    paused: PausedRun | None,
) -> Claim:
    """The claim of a live session ``row`` whose encoded items are ``texts``: the items the
    summary does not cover, and where each ends in the encoded history."""
    covered = row.summary.items if row.summary else 0
    position, ends = 0, []
    for text in texts:
        position += len(text.encode()) + 1
        ends.append(position)
    return Claim(
        session_id,
        token,
        token,
        new_session=False,
        history=[json.loads(text) for text in texts[covered:]],
        turns=row.turns,
        tail=b"",
        chunks=0,
        stale_chunks=0,
        total_bytes=row.bytes,
        created_at=row.created_at,
        until=until,
        generation=row.generation,
        summary=row.summary,
        item_count=row.items,
        item_ends=tuple(ends[covered:]),
        token_ratio=row.token_ratio,
        paused=paused,
        approvals=row.approvals,
        totals=row.totals,
    )
