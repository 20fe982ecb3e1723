"""Conversation history in Firestore: layout, size bounds and consistency.

Storage layout
--------------
One conversation is one session document plus zero or more chunk documents (field
names and document shapes: ``schema.py``)::

    agent_sessions/{doc_id}                          the session document
        tail         bytes      newest part of the encoded history, < CHUNK_BYTES
        chunks       int        number of sealed chunk documents
        items        int        items in the whole history
        bytes        int        size of the encoded history
        turns        int        completed turns (0: claimed, nothing committed yet)
        claim_token  str|null   who is running a turn on it, and until when
        claim_until  Timestamp|null
        owner        str        principal that created it: only it may read, continue
                                or delete it (to anyone else it is absent)
        created_at, updated_at  Timestamp
        expire_at    Timestamp  TTL field
    agent_sessions/{doc_id}/agent_history_chunks/{000000..}
        data         bytes      exactly CHUNK_BYTES of the encoded history
        expire_at    Timestamp  TTL field, kept equal to the session's
    agent_idempotency/{sha256(principal, key)}       one Idempotency-Key's record,
                                                     written by store/idempotency_records.py
                                                     (its header has the fields)

The encoded history is one byte stream: each item as compact JSON and a newline.
Chunks cut that stream every CHUNK_BYTES regardless of item boundaries, so an item
of any size fits and no document holds more than CHUNK_BYTES (512 KiB) of history
plus a few hundred bytes of fields: half of Firestore's 1 MiB limit, whatever the
history length. ``doc_id`` is the session id, except that ids Firestore reserves
(``__x__``) get a ``~`` prefix, a character session ids cannot contain.

Cost
----
Loading a history reads the session document and then ``chunks`` chunk documents:
one read per 512 KiB. A turn on a history under 512 KiB costs one read and two
commits: the claim, and the final commit.

Consistency
-----------
* A turn claims the session first: a write conditioned on the ``update_time`` it
  read, so of two concurrent claims exactly one wins and the other gets
  ``SessionBusy`` at once, without waiting on a lock. A claim lapses at its
  ``claim_until`` (the turn's deadline), so a crashed instance never locks a
  session for good.
* All items of a turn are written in one atomic commit, conditioned on the claim
  write's ``update_time``: if the claim was lost, nothing is written. A run that
  fails leaves the history exactly as it was.
* Ownership: ``load``, ``claim`` and ``delete`` take the caller's principal. A live
  session of another owner reads as absent, cannot be deleted, and cannot be
  claimed (``SessionTaken``); an expired one is taken over like an absent one.
* Sealed chunks are never rewritten (only their ``expire_at`` slides), so a reader
  that sees ``chunks = n`` and a tail can read chunks ``0..n-1`` without a
  transaction and get a consistent history.

Expiry
------
Every document carries ``expire_at``; each turn slides it on all of them to
now + ``SESSION_TTL_SECONDS``. Firestore's TTL deletion is lazy (up to about 24 h)
and the emulator never deletes, so reads treat an expired session as absent, and a
turn on an expired id starts a new, empty history under it.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore

from agent.base import tracing
from agent.base.clock import retry_after
from agent.store.calls import bounded_retry, outage_as_unavailable
from agent.store.schema import (
    BYTES,
    CHUNK_COUNT,
    CHUNKS,
    CLAIM_TOKEN,
    CLAIM_UNTIL,
    CREATED_AT,
    DATA,
    ITEMS,
    OWNER,
    SESSIONS,
    TAIL,
    TTL_FIELD,
    TURNS,
    UPDATED_AT,
    chunk_id,
)

CHUNK_BYTES = 512 * 1024
MAX_TURN_BYTES = 3 * 1024 * 1024
"""Largest history growth one turn may add: its commit is one gRPC message, which
the client and the emulator cap at 4 MiB."""

Item = dict[str, Any]


class StoreError(Exception):
    """Base of the errors this module raises on purpose."""


class SessionBusy(StoreError):
    """Another turn holds the session."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("session is busy")
        self.retry_after = retry_after


class SessionTaken(StoreError):
    """The id names a live session of another principal."""


class ClaimLost(StoreError):
    """The claim lapsed before the commit; nothing was written."""


class TurnTooLarge(StoreError):
    """One turn's items exceed MAX_TURN_BYTES."""


class Deletion(enum.Enum):
    DELETED = "deleted"  # a live session of the caller's
    ABSENT = "absent"  # nothing live under this id (an expired history's leftovers went)
    NOT_YOURS = "not_yours"  # someone else's: left alone, reported to them as absent


@dataclass(frozen=True)
class History:
    session_id: str
    items: list[Item]
    turns: int
    expire_at: dt.datetime


@dataclass(frozen=True)
class Claim:
    """A running turn's hold on a session, with the history it loaded."""

    session_id: str
    token: str
    update_time: Any  # protobuf Timestamp of the claim write: the commit's precondition
    new_session: bool
    history: list[Item]
    turns: int
    tail: bytes
    chunks: int
    stale_chunks: int  # chunk documents of an expired history, deleted at commit
    total_bytes: int
    created_at: dt.datetime


def doc_id(session_id: str) -> str:
    if session_id.startswith("__") and session_id.endswith("__"):
        return "~" + session_id
    return session_id


def encode(items: Sequence[Item]) -> bytes:
    return b"".join(
        json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for item in items
    )


def decode(data: bytes) -> list[Item]:
    return [json.loads(line) for line in data.split(b"\n") if line]


class HistoryStore:
    """Reads and writes conversation histories. Thread-safe; calls are synchronous."""

    def __init__(
        self, client: firestore.Client, *, ttl_seconds: int, timeout_seconds: float
    ) -> None:
        self._client = client
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    # -- reading -------------------------------------------------------------------

    def load(self, session_id: str, now: dt.datetime, owner: str | None = None) -> History | None:
        """The live history of a session, or None when absent or expired (or, with
        ``owner``, owned by someone else)."""
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(retry=self._retry, timeout=self._timeout)
            data = snap.to_dict() if snap.exists else None
            if data is None or not _is_live(data, now) or not _owned_by(data, owner):
                return None
            try:
                stream = self._read_chunks(session_id, data[CHUNK_COUNT]) + bytes(data[TAIL])
            except ClaimLost:  # deleted while we read it
                return None
        return History(session_id, decode(stream), data[TURNS], data[TTL_FIELD])

    # -- a turn: claim, then commit or release ---------------------------------------

    def claim(
        self, session_id: str, now: dt.datetime, until: dt.datetime, owner: str | None = None
    ) -> Claim:
        """Take the session for one turn until ``until``; raises SessionBusy, and with
        ``owner`` SessionTaken when someone else's live session has this id."""
        ref = self._session_ref(session_id)
        token = secrets.token_urlsafe(16)
        hold: dict[str, Any] = {CLAIM_TOKEN: token, CLAIM_UNTIL: until}
        if owner is not None:
            hold[OWNER] = owner
        with outage_as_unavailable():
            snap = ref.get(retry=self._retry, timeout=self._timeout)
            data: dict[str, Any] | None = snap.to_dict() if snap.exists else None
            batch = self._client.batch()
            if data is None:
                batch.create(ref, _empty_session(now, until) | hold)
            else:
                _raise_if_taken(data, now, owner)
                _raise_if_held(data, now)
                batch.update(ref, hold, option=self._precondition(snap.update_time))
            try:
                results = batch.commit(retry=self._retry, timeout=self._timeout)
            except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.Conflict):
                raise SessionBusy(1) from None  # another claim won the race
            claimed_at = results[0].update_time
            if data is None or not _is_live(data, now):
                stale = 0 if data is None else int(data.get(CHUNK_COUNT, 0))
                return Claim(
                    session_id,
                    token,
                    claimed_at,
                    new_session=True,
                    history=[],
                    turns=0,
                    tail=b"",
                    chunks=0,
                    stale_chunks=stale,
                    total_bytes=0,
                    created_at=now,
                )
            tail = bytes(data[TAIL])
            with tracing.span("load_history", **{"agent.history_chunks": data[CHUNK_COUNT]}):
                stream = self._read_chunks(session_id, data[CHUNK_COUNT]) + tail
                history = decode(stream)
        return Claim(
            session_id,
            token,
            claimed_at,
            new_session=False,
            history=history,
            turns=data[TURNS],
            tail=tail,
            chunks=data[CHUNK_COUNT],
            stale_chunks=0,
            total_bytes=len(stream),
            created_at=data[CREATED_AT],
        )

    def commit(
        self,
        claim: Claim,
        new_items: Sequence[Item],
        now: dt.datetime,
        *,
        replace: bool = False,
        count_turn: bool = True,
        extra_writes: Callable[[Any, dt.datetime], None] | None = None,
    ) -> History:
        """Append ``new_items`` (or, with ``replace``, make them the whole history)
        and release the claim, in one atomic commit. Raises ClaimLost.

        ``extra_writes(batch, expire_at)`` adds writes of its own to that commit, so
        they land if and only if the turn does (the idempotency record)."""
        added = encode(new_items)
        if len(added) > MAX_TURN_BYTES:
            raise TurnTooLarge(f"{len(added)} bytes in one turn")
        if replace:
            first_chunk, tail, old_chunks = 0, added, claim.chunks
        else:
            first_chunk, tail, old_chunks = claim.chunks, claim.tail + added, claim.chunks
        expire_at = now + self._ttl
        ref = self._session_ref(claim.session_id)
        batch = self._client.batch()
        sealed = 0
        while len(tail) >= CHUNK_BYTES:
            chunk = {DATA: tail[:CHUNK_BYTES], TTL_FIELD: expire_at}
            batch.set(self._chunk_ref(claim.session_id, first_chunk + sealed), chunk)
            tail, sealed = tail[CHUNK_BYTES:], sealed + 1
        chunks = first_chunk + sealed
        for index in range(first_chunk):  # sealed earlier: only their expiry slides
            batch.update(self._chunk_ref(claim.session_id, index), {TTL_FIELD: expire_at})
        for index in range(chunks, max(old_chunks, claim.stale_chunks)):
            batch.delete(self._chunk_ref(claim.session_id, index))
        items = len(new_items) if replace else len(claim.history) + len(new_items)
        total = len(added) if replace else claim.total_bytes + len(added)
        turns = claim.turns + (1 if count_turn else 0)
        fields = {
            TAIL: tail,
            CHUNK_COUNT: chunks,
            ITEMS: items,
            BYTES: total,
            TURNS: turns,
            CLAIM_TOKEN: None,
            CLAIM_UNTIL: None,
            CREATED_AT: claim.created_at,
            UPDATED_AT: now,
            TTL_FIELD: expire_at,
        }
        batch.update(ref, fields, option=self._precondition(claim.update_time))
        if extra_writes is not None:
            extra_writes(batch, expire_at)
        with outage_as_unavailable():
            try:
                batch.commit(retry=self._retry, timeout=self._timeout)
            except (gexc.FailedPrecondition, gexc.NotFound):
                raise ClaimLost(claim.session_id) from None
        history = claim.history if not replace else []
        return History(claim.session_id, [*history, *new_items], turns, expire_at)

    def release(self, claim: Claim) -> None:
        """Give the session back after a failed turn; history stays untouched.

        Best effort: if this fails too, the claim lapses at its deadline."""
        ref = self._session_ref(claim.session_id)
        option = self._precondition(claim.update_time)
        try:
            if claim.turns == 0 and claim.stale_chunks == 0 and not claim.history:
                ref.delete(option=option, retry=self._retry, timeout=self._timeout)
            else:
                ref.update(
                    {CLAIM_TOKEN: None, CLAIM_UNTIL: None},
                    option=option,
                    retry=self._retry,
                    timeout=self._timeout,
                )
        except gexc.GoogleAPIError:
            pass

    # -- deleting ----------------------------------------------------------------

    def delete(self, session_id: str, now: dt.datetime, owner: str | None = None) -> Deletion:
        """Delete every document of a session (an expired one's leftovers too), unless
        ``owner`` is given and someone else owns it. Raises SessionBusy."""
        ref = self._session_ref(session_id)
        with outage_as_unavailable():
            snap = ref.get(retry=self._retry, timeout=self._timeout)
            if not snap.exists:
                return Deletion.ABSENT
            data = snap.to_dict() or {}
            if not _owned_by(data, owner):
                return Deletion.NOT_YOURS
            _raise_if_held(data, now)
            batch = self._client.batch()
            for index in range(data.get(CHUNK_COUNT, 0)):
                batch.delete(self._chunk_ref(session_id, index))
            batch.delete(ref, option=self._precondition(snap.update_time))
            try:
                batch.commit(retry=self._retry, timeout=self._timeout)
            except gexc.FailedPrecondition:
                raise SessionBusy(1) from None
        return Deletion.DELETED if _is_live(data, now) else Deletion.ABSENT

    def owner_of(self, session_id: str, now: dt.datetime) -> str | None:
        """The owner of the live session ``session_id``; None when absent or expired.
        For routes that act on a session without running a turn."""
        with outage_as_unavailable():
            snap = self._session_ref(session_id).get(
                [OWNER, TURNS, TTL_FIELD], retry=self._retry, timeout=self._timeout
            )
            data = snap.to_dict() if snap.exists else None
        if data is None or not _is_live(data, now):
            return None
        owner = data.get(OWNER)
        return owner if isinstance(owner, str) else None

    # -- internals -----------------------------------------------------------------

    def _precondition(self, update_time: Any) -> Any:
        """Write only if the document is still as we last saw or wrote it."""
        return self._client.write_option(last_update_time=update_time)

    def _session_ref(self, session_id: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(SESSIONS).document(
            doc_id(session_id)
        )
        return ref

    def _chunk_ref(self, session_id: str, index: int) -> firestore.DocumentReference:
        chunks = self._session_ref(session_id).collection(CHUNKS)
        ref: firestore.DocumentReference = chunks.document(chunk_id(index))
        return ref

    def _read_chunks(self, session_id: str, count: int) -> bytes:
        if count == 0:
            return b""
        refs = [self._chunk_ref(session_id, i) for i in range(count)]
        by_id = {
            snap.id: snap
            for snap in self._client.get_all(refs, retry=self._retry, timeout=self._timeout)
        }
        parts = []
        for ref in refs:
            snap = by_id.get(ref.id)
            if snap is None or not snap.exists:
                # Only a concurrent delete removes sealed chunks.
                raise ClaimLost(session_id)
            parts.append(bytes((snap.to_dict() or {})[DATA]))
        return b"".join(parts)


def _empty_session(now: dt.datetime, until: dt.datetime) -> dict[str, Any]:
    # A claimed but never committed session expires with its claim, so TTL removes
    # the placeholder of a crashed first turn.
    return {
        TAIL: b"",
        CHUNK_COUNT: 0,
        ITEMS: 0,
        BYTES: 0,
        TURNS: 0,
        CREATED_AT: now,
        UPDATED_AT: now,
        TTL_FIELD: until,
    }


def _is_live(data: dict[str, Any], now: dt.datetime) -> bool:
    return bool(data.get(TURNS, 0) > 0 and data[TTL_FIELD] > now)


def _owned_by(data: dict[str, Any], owner: str | None) -> bool:
    # A session without an owner (written before owners existed, or by library use)
    # belongs to no principal of the service.
    return owner is None or data.get(OWNER) == owner


def _raise_if_taken(data: dict[str, Any], now: dt.datetime, owner: str | None) -> None:
    if _owned_by(data, owner):
        return
    held_until = data.get(CLAIM_UNTIL)
    if _is_live(data, now) or (data.get(CLAIM_TOKEN) and held_until and held_until > now):
        raise SessionTaken("the id names a live session of another principal")


def _raise_if_held(data: dict[str, Any], now: dt.datetime) -> None:
    held_until = data.get(CLAIM_UNTIL)
    if data.get(CLAIM_TOKEN) and held_until and held_until > now:
        raise SessionBusy(retry_after(held_until, now))
