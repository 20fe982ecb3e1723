"""Background runs in Firestore: ``RunStore``. Layout, size bounds and consistency.

The promises are ``run_records.py``'s; what each operation does to a run and to its
session's queue is ``run_rules.py``'s, shared with the SQLite store. This module
stores them.

Storage layout
--------------
::

    agent_runs/{run_id}                              the run (schema.RunDoc): status,
                                                     times, request, lease, step, usage,
                                                     the last event's seq, the state when
                                                     small, the outcome; maps as JSON text
    agent_runs/{run_id}/agent_run_events/{seq:010d}  one event (type, data as JSON),
                                                     created once, never rewritten
    agent_runs/{run_id}/agent_run_state/{part:02d}   the state in parts, when it is over
                                                     STATE_INLINE_BYTES
    agent_session_runs/{doc_id(session_id)}          the session's runs not ended, oldest
                                                     first: {run_id, deadline} each

Every document has ``expire_at``: the run's own (``Run.expire_at``, which never
slides), so a run's record, events and state expire together; the session's queue
document takes the latest of its runs'. Reads treat an expired run as absent (the
emulator never deletes, and Firestore's TTL sweep is lazy). Nothing is queried: a
run is read by id, its events by their ids (``events`` reads the run document for its
last ``seq`` and then exactly the events asked for, one read each), so no index is
needed and every field is exempted from indexing (``deploy/collection_groups.py``).

Size bounds
-----------
``run_rules.py`` bounds what a caller may store: an event's data 32 KiB, 400 events and
1 MiB of them per write, the state 2 MiB, the record's maps 384 KiB together; anything
larger is ``RunTooLarge`` before any write. Here that makes: a run document at most
about 650 KiB (the maps, and the state inline only up to STATE_INLINE_BYTES = 256 KiB;
a larger state goes in parts of STATE_PART_BYTES = 512 KiB, at most four), under
Firestore's 1 MiB; one write at most about 3.5 MiB and 410 documents, under the
emulator's 4 MiB request and the 500 writes of a batch.

Consistency
-----------
* Every write is one atomic batch, conditioned on what it read: the run document's
  ``update_time`` (an update with that precondition), the session's queue document's
  too when the queue changes (or its ``create`` when there was none), and events and a
  new run with ``create``, which refuses a document that exists. A write refused
  because something changed is read and decided again (at most three times): of two
  concurrent writers exactly one wins and the other sees its outcome.
* ``create`` keeps one run in flight per session and FIFO: it reads the queue document
  and writes it back, with the new run, in one batch conditioned on the queue's
  ``update_time``; two creates racing on one session cannot both see it empty. ``end``
  takes the run out of the queue in the same batch as the run's terminal status.
* ``take``, ``checkpoint`` and ``end`` are conditioned on the lease: the rule checks the
  token and its expiry on the run as read, and the write is conditioned on that read,
  so no other writer (another worker's take once the lease lapsed, a cancel) can come
  in between. A checkpoint's events and state land with the run's new ``step`` and
  ``seq`` or not at all.
* A write whose reply is lost (a reset, the client's retry refused because the first
  attempt landed) or held past the timeout: the batch is read and decided again, and
  the rules recognise their own write. A retried ``create`` finds its run (same id)
  and returns it. A checkpoint carries (token, step): a retry that finds the run at
  that step under its own token treats it as landed and writes nothing, so its events
  never appear twice (their ``create`` would be refused anyway). A take finds its own
  lease (a renewal), an end its own mark (``released_by``), a cancel the request
  recorded, a resume its decisions. A write held so long that the retry lands first is
  refused when it arrives, its precondition stale. When Firestore does not answer in
  time the call raises ``StoreUnavailable`` (503): the caller's retry (the queue
  delivering the task again) finds what landed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

from agent.base.clock import utc_now
from agent.store import run_rules
from agent.store.calls import OUTAGE, StoreUnavailable, bounded_retry, outage_as_unavailable
from agent.store.history import doc_id
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
    RUN_STATE,
    RUN_STATUS,
    RUNS,
    SEQ,
    SESSION_ID,
    SESSION_RUNS,
    STATE,
    STATE_PARTS,
    STEP,
    TTL_FIELD,
    UPDATED_AT,
    USAGE,
    run_event_id,
)

STATE_INLINE_BYTES = 256 * 1024
STATE_PART_BYTES = 512 * 1024
_ATTEMPTS = 3
# A write refused with these did not land in that attempt (an earlier one may have).
_REFUSED = (gexc.FailedPrecondition, gexc.NotFound, gexc.AlreadyExists)
# A write that ended with these may or may not have landed.
_UNKNOWN = (*OUTAGE, gexc.Aborted, gexc.Cancelled)
T = TypeVar("T")


class _Changed(Exception):
    """The write was refused or its outcome is unknown: read and decide again."""


def _valid_id(run_id: str) -> bool:
    """A run id that names a document (ids come from URLs: never a path or reserved)."""
    return (
        bool(run_id)
        and "/" not in run_id
        and run_id not in (".", "..")
        and not (run_id.startswith("__") and run_id.endswith("__"))
        and len(run_id.encode()) <= 512
    )


def _json(value: Any) -> str | None:
    return None if value is None else run_rules.to_json(value)


def _loads(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _fields(run: Run, inline: bytes | None, parts: int) -> dict[str, Any]:
    return {
        SESSION_ID: run.session_id,
        OWNER: run.owner,
        RUN_STATUS: run.status,
        CREATED_AT: run.created_at,
        UPDATED_AT: run.updated_at,
        TTL_FIELD: run.expire_at,
        DEADLINE: run.deadline,
        REQUEST: run_rules.to_json(run.request),
        CLAIM_TOKEN: run.claim_token,
        GENERATION: run.generation,
        STEP: run.step,
        STATE: inline,
        STATE_PARTS: parts,
        USAGE: run_rules.to_json(run.usage),
        SEQ: run.seq,
        LEASE: run.lease,
        LEASE_UNTIL: run.lease_until,
        CANCEL: run.cancel,
        RESPONSE: _json(run.response),
        ERROR: _json(run.error),
        RUN_PENDING: _json(run.pending),
        AFTER: run.after,
        RELEASED_BY: run.released_by,
        NEXT_RUN: run.next_run,
    }


def _run_of(run_id: str, data: dict[str, Any], state: bytes | None) -> Run:
    return Run(
        run_id=run_id,
        session_id=data[SESSION_ID],
        owner=data.get(OWNER),
        status=data[RUN_STATUS],
        created_at=data[CREATED_AT],
        updated_at=data[UPDATED_AT],
        expire_at=data[TTL_FIELD],
        deadline=data[DEADLINE],
        request=_loads(data.get(REQUEST)) or {},
        claim_token=data.get(CLAIM_TOKEN),
        generation=data.get(GENERATION),
        step=int(data.get(STEP) or 0),
        state=state,
        usage=_loads(data.get(USAGE)) or {},
        seq=int(data.get(SEQ) or 0),
        lease=data.get(LEASE),
        lease_until=data.get(LEASE_UNTIL),
        cancel=data.get(CANCEL),
        response=_loads(data.get(RESPONSE)),
        error=_loads(data.get(ERROR)),
        pending=_loads(data.get(RUN_PENDING)),
        after=data.get(AFTER),
        released_by=data.get(RELEASED_BY),
        next_run=data.get(NEXT_RUN),
    )


class _Read:
    """A run as one read saw it: the record, and what a write conditions on."""

    def __init__(self, snap: Any, run: Run | None) -> None:
        self.snap = snap
        self.run = run
        self.parts = int((snap.to_dict() or {}).get(STATE_PARTS) or 0) if snap.exists else 0


class RunStore:
    """Background runs and their event logs in Firestore. Thread-safe; synchronous."""

    def __init__(self, client: firestore.Client, *, timeout_seconds: float) -> None:
        self._client = client
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    # -- reading ---------------------------------------------------------------------

    def get(self, run_id: str, now: dt.datetime, owner: str | None = None) -> Run | None:
        if not _valid_id(run_id):
            return None
        with outage_as_unavailable():
            run = self._read(run_id).run
        if run is None or not run_rules.is_live(run, now):
            return None
        if owner is not None and run.owner != owner:
            return None
        return run

    def events(self, run_id: str, after: int, limit: int) -> list[LoggedEvent]:
        """The run document's ``seq`` and expiry first, then exactly the events asked for
        (by id, one read each); those of an expired run read as none (by the clock)."""
        if not _valid_id(run_id) or limit <= 0:
            return []
        with outage_as_unavailable():
            snap = self._run_ref(run_id).get(
                [SEQ, TTL_FIELD], retry=self._retry, timeout=self._timeout
            )
            data = snap.to_dict() if snap.exists else None
            if data is None or data[TTL_FIELD] <= utc_now():
                return []
            last = min(int(data.get(SEQ) or 0), after + limit)
            if last <= after:
                return []
            refs = [self._event_ref(run_id, seq) for seq in range(after + 1, last + 1)]
            snaps = self._client.get_all(refs, retry=self._retry, timeout=self._timeout)
            found = {s.id: s.to_dict() for s in snaps if s.exists}
        events: list[LoggedEvent] = []
        for seq in range(after + 1, last + 1):
            doc = found.get(run_event_id(seq))
            if doc is None:
                break  # never a gap: what follows a missing event is not returned
            events.append(LoggedEvent(seq=seq, type=doc[EVENT_TYPE], data=json.loads(doc[DATA])))
        return events

    # -- writing ---------------------------------------------------------------------

    def create(self, run: Run, first: Sequence[NewEvent], *, enqueue: bool) -> Run:
        texts = run_rules.check_events(first)
        run_rules.check_record(run)
        if not _valid_id(run.run_id):
            raise ValueError(f"not a valid run id: {run.run_id!r}")
        now = run.created_at
        queue_ref = self._queue_ref(run.session_id)

        def attempt() -> Run:
            found = self._read(run.run_id)
            if found.run is not None:
                return found.run  # a retry of this create (its first reply was lost)
            queue_snap = queue_ref.get(retry=self._retry, timeout=self._timeout)
            queue, queue_expiry = _queue_of(queue_snap)
            queue, admitted = run_rules.admitted(queue, run, now, enqueue=enqueue)
            admitted, events = run_rules.logged(admitted, first)
            batch = self._client.batch()
            self._put_run(batch, admitted, None, created=True)
            self._put_events(batch, admitted, events, texts)
            expiry = max(queue_expiry or admitted.expire_at, admitted.expire_at)
            self._put_queue(batch, queue_ref, queue_snap, queue, expiry)
            self._commit(batch)
            return admitted

        return self._decided(attempt)

    def take(self, run_id: str, step: int, token: str, now: dt.datetime, until: dt.datetime) -> Run:
        def attempt() -> Run:
            found = self._read(run_id) if _valid_id(run_id) else None
            run, new = run_rules.taken(found.run if found else None, step, token, now, until)
            assert found is not None
            texts = run_rules.check_events(new)
            run, events = run_rules.logged(run, new)
            batch = self._client.batch()
            self._put_run(batch, run, found)
            self._put_events(batch, run, events, texts)
            self._commit(batch)
            return run

        return self._decided(attempt)

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

        def attempt() -> Run:
            found = self._read(run_id) if _valid_id(run_id) else None
            run = run_rules.checkpointed(
                found.run if found else None,
                token,
                now,
                step=step,
                state=state,
                usage=usage,
                status=status,
                claim_token=claim_token,
                generation=generation,
            )
            assert found is not None and found.run is not None
            if run is None:
                return found.run  # landed already under our token: nothing again
            run_rules.check_record(run)
            run, logged = run_rules.logged(run, events)
            batch = self._client.batch()
            self._put_run(batch, run, found)
            self._put_events(batch, run, logged, texts)
            self._commit(batch)
            return run

        return self._decided(attempt)

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

        def attempt() -> Run:
            found = self._read(run_id) if _valid_id(run_id) else None
            run = run_rules.ended(
                found.run if found else None,
                token,
                now,
                status=status,
                usage=usage,
                response=response,
                error=error,
                pending=pending,
            )
            assert found is not None and found.run is not None
            if run is None:
                return found.run  # this end landed already
            run_rules.check_record(run)
            batch = self._client.batch()
            if run.ended:
                queue_ref = self._queue_ref(run.session_id)
                queue_snap = queue_ref.get(retry=self._retry, timeout=self._timeout)
                queue, expiry = _queue_of(queue_snap)
                if queue_snap.exists:
                    queue, next_id = run_rules.dequeued(queue, run_id)
                    run = dataclasses.replace(run, next_run=next_id)
                    self._put_queue(batch, queue_ref, queue_snap, queue, expiry or run.expire_at)
            run, logged = run_rules.logged(run, events)
            self._put_run(batch, run, found)
            self._put_events(batch, run, logged, texts)
            self._commit(batch)
            return run

        ended = self._decided(attempt)
        following = self.get(ended.next_run, now) if ended.next_run else None
        return ended, following

    def cancel(self, run_id: str, action: CancelAction, now: dt.datetime) -> Run:
        def attempt() -> Run:
            found = self._read(run_id) if _valid_id(run_id) else None
            run = run_rules.cancelled(found.run if found else None, action, now)
            assert found is not None and found.run is not None
            if run is None:
                return found.run  # the first request counts
            batch = self._client.batch()
            self._put_run(batch, run, found)
            self._commit(batch)
            return run

        return self._decided(attempt)

    def resume(self, run_id: str, decisions: dict[str, Any], now: dt.datetime) -> Run:
        def attempt() -> Run:
            found = self._read(run_id) if _valid_id(run_id) else None
            decided = run_rules.resumed(found.run if found else None, decisions, now)
            assert found is not None and found.run is not None
            if decided is None:
                return found.run  # resumed so already
            run, new = decided
            run_rules.check_record(run)
            texts = run_rules.check_events(new)
            run, logged = run_rules.logged(run, new)
            batch = self._client.batch()
            self._put_run(batch, run, found)
            self._put_events(batch, run, logged, texts)
            self._commit(batch)
            return run

        return self._decided(attempt)

    # -- internals -------------------------------------------------------------------

    def _decided(self, attempt: Callable[[], T]) -> T:
        """Read, decide and write; a write refused or of unknown outcome is read and
        decided again (the rules recognise a write of ours that landed)."""
        with outage_as_unavailable():
            for _ in range(_ATTEMPTS):
                try:
                    return attempt()
                except _Changed:
                    continue
        raise StoreUnavailable("the run kept changing, or its writes did not answer")

    def _commit(self, batch: Any) -> None:
        try:
            batch.commit(retry=self._retry, timeout=self._timeout)
        except (*_REFUSED, *_UNKNOWN) as exc:
            raise _Changed(type(exc).__name__) from exc

    def _read(self, run_id: str) -> _Read:
        """The run document and, when the state is in parts, the parts as of the same
        read (a later checkpoint may rewrite them)."""
        snap = self._run_ref(run_id).get(retry=self._retry, timeout=self._timeout)
        data = snap.to_dict() if snap.exists else None
        if data is None:
            return _Read(snap, None)
        state: bytes | None = None if data.get(STATE) is None else bytes(data[STATE])
        parts = int(data.get(STATE_PARTS) or 0)
        if parts:
            refs = [self._state_ref(run_id, n) for n in range(parts)]
            got = self._client.get_all(
                refs, retry=self._retry, timeout=self._timeout, read_time=snap.read_time
            )
            by_id = {s.id: s.to_dict() for s in got if s.exists}
            missing = [r.id for r in refs if by_id.get(r.id) is None]
            if missing:
                raise RuntimeError(f"state parts {missing} of run {run_id} missing")
            state = b"".join(bytes(by_id[r.id][DATA]) for r in refs)  # type: ignore[index]
        return _Read(snap, _run_of(run_id, data, state))

    def _put_run(self, batch: Any, run: Run, found: _Read | None, *, created: bool = False) -> None:
        """The run document (and its state's parts), conditioned on ``found``'s read."""
        state = run.state
        if state is not None and len(state) > STATE_INLINE_BYTES:
            pieces = [
                state[at : at + STATE_PART_BYTES] for at in range(0, len(state), STATE_PART_BYTES)
            ]
            inline = None
        else:
            pieces, inline = [], state
        for n, piece in enumerate(pieces):
            batch.set(self._state_ref(run.run_id, n), {DATA: piece, TTL_FIELD: run.expire_at})
        for n in range(len(pieces), found.parts if found else 0):
            batch.delete(self._state_ref(run.run_id, n))
        fields = _fields(run, inline, len(pieces))
        ref = self._run_ref(run.run_id)
        if created or found is None:
            batch.create(ref, fields)
        else:
            option = self._client.write_option(last_update_time=found.snap.update_time)
            batch.update(ref, fields, option=option)

    def _put_events(
        self, batch: Any, run: Run, events: Sequence[LoggedEvent], texts: Sequence[str]
    ) -> None:
        for event, text in zip(events, texts, strict=True):
            doc = {EVENT_TYPE: event.type, DATA: text, TTL_FIELD: run.expire_at}
            batch.create(self._event_ref(run.run_id, event.seq), doc)

    def _put_queue(
        self,
        batch: Any,
        ref: firestore.DocumentReference,
        snap: Any,
        queue: run_rules.Queue,
        expire_at: dt.datetime,
    ) -> None:
        doc = {
            QUEUE: [{RUN_ID: q.run_id, DEADLINE: q.deadline} for q in queue],
            TTL_FIELD: expire_at,
        }
        if snap.exists:
            option = self._client.write_option(last_update_time=snap.update_time)
            batch.update(ref, doc, option=option)
        else:
            batch.create(ref, doc)

    def _run_ref(self, run_id: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(RUNS).document(run_id)
        return ref

    def _event_ref(self, run_id: str, seq: int) -> firestore.DocumentReference:
        events = self._run_ref(run_id).collection(RUN_EVENTS)
        ref: firestore.DocumentReference = events.document(run_event_id(seq))
        return ref

    def _state_ref(self, run_id: str, part: int) -> firestore.DocumentReference:
        parts = self._run_ref(run_id).collection(RUN_STATE)
        ref: firestore.DocumentReference = parts.document(f"{part:02d}")
        return ref

    def _queue_ref(self, session_id: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(SESSION_RUNS).document(
            doc_id(session_id)
        )
        return ref


def _queue_of(snap: Any) -> tuple[run_rules.Queue, dt.datetime | None]:
    """A session's queue as read, and its document's expiry (None: no document)."""
    data = snap.to_dict() if snap.exists else None
    if data is None:
        return (), None
    queue = tuple(run_rules.Queued(e[RUN_ID], e[DEADLINE]) for e in data.get(QUEUE) or ())
    expire_at: dt.datetime = data[TTL_FIELD]
    return queue, expire_at
