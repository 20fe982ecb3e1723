"""Idempotency-Key records: a retried request never runs the agent twice.

One record per (principal, key), at ``agent_idempotency/{sha256(principal, key)}``
(``schema.KeyDoc``)::

    owner        str        the principal (keys of different callers never meet)
    fingerprint  str        SHA-256 of the request (message and session_id)
    session_id   str        the session the request runs on (chosen before the run,
                            so a retry without session_id lands on the same one)
    state        str        "running" or "done"
    running_until Timestamp when a running record's turn would have timed out
    response     map|null   when done: session_id, reply, new_session, usage
    expire_at    Timestamp  TTL field: while running, at least running_until (a
                            record must not expire, and be taken by a retry, while its
                            turn runs); when done, the session's expire_at as of that
                            turn, so a key lives no longer than its session
    generation   str        when done: the life of the session the turn was stored in

* Same key, same body: while the first request runs, 409
  ``idempotency_key_in_progress`` with ``Retry-After``; once it succeeded, its stored
  response is replayed (``agent/turn/idempotency.py``) and the agent does not run.
* Same key, different body: 422 ``idempotency_key_reused``.
* The record becomes "done" in the very commit that stores the turn
  (``HistoryStore.commit``'s ``extra_writes``): there is no moment at which the
  turn is stored but the key is not, so a crash cannot lead to a second run.
* A failed turn stores nothing and deletes its record, so a retry runs again. If the
  instance dies mid-turn, the record lapses with the turn's claim at
  ``running_until``; a retry after that takes it over and runs the turn, once.
* A stored response must fit one document: with a key, a reply over
  ``MAX_STORED_RESPONSE_BYTES`` fails the turn (502) and nothing is stored.
* Deleting a session deletes its keys' records (they hold its replies): those of the
  life it deleted (``generation``), never those of a life begun since under the same id.
  Should that clean-up fail, a done record still never replays in another life: a
  replay first checks that the session's live generation is the record's (one read,
  paid only by a replay), and a record of a gone life is taken over like an expired one.
* A record carries its writer's token (``writer``): a create whose reply was lost finds
  its own record on re-read and runs, instead of answering 409 to its own request; a
  write whose outcome is unknown is written again with the same token, so a record
  never lands running after its request gave up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from agent.base import errors
from agent.base.clock import retry_after, utc_now
from agent.store.calls import OUTAGE, StoreUnavailable, bounded_retry, outage_as_unavailable
from agent.store.history import TurnTooLarge, doc_id
from agent.store.schema import (
    DONE,
    FINGERPRINT,
    GENERATION,
    IDEMPOTENCY,
    OWNER,
    RESPONSE,
    RUNNING,
    RUNNING_UNTIL,
    SESSION_ID,
    SESSIONS,
    STATE,
    TTL_FIELD,
    TURNS,
    WRITER,
    KeyDoc,
)

log = logging.getLogger(__name__)

MAX_STORED_RESPONSE_BYTES = 768 * 1024
_ATTEMPTS = 3
"""How often ``begin`` looks again after a write that was refused or whose outcome is
unknown: each look either finds our own write (its token) or decides anew."""
_REFUSED = (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.Conflict)
_UNKNOWN = (*OUTAGE, gexc.Aborted, gexc.Cancelled)


@dataclass(frozen=True)
class KeyClaim:
    """Our hold on a running record: later writes are conditioned on ``update_time``."""

    ref: Any
    update_time: Any
    session_id: str


@dataclass(frozen=True)
class StoredResponse:
    """A finished request's response, to replay."""

    response: dict[str, Any]
    expire_at: dt.datetime


class IdempotencyStore:
    """Reads and writes Idempotency-Key records. Thread-safe; calls are synchronous."""

    def __init__(
        self, client: firestore.Client, *, ttl_seconds: int, timeout_seconds: float
    ) -> None:
        self._client = client
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    def begin(
        self, principal: str, key: str, fingerprint: str, session_id: str, until: dt.datetime
    ) -> KeyClaim | StoredResponse:
        """Our claim to run the request, or the stored response to replay; raises
        ApiError 409 ``idempotency_key_in_progress`` / 422 ``idempotency_key_reused``,
        or StoreUnavailable."""
        ref = self._client.collection(IDEMPOTENCY).document(_doc_id(principal, key))
        token = secrets.token_urlsafe(16)
        wrote = False  # whether a write of ours may have landed
        failure: Exception | None = None
        for _ in range(_ATTEMPTS):
            now = utc_now()
            try:
                snap = ref.get(retry=self._retry, timeout=self._timeout)
            except OUTAGE as exc:
                raise StoreUnavailable(type(exc).__name__) from exc
            data = snap.to_dict() if snap.exists else None
            if wrote and data is not None and data.get(WRITER) == token:
                # Our own write landed and its reply was lost: ours, not "in progress".
                return KeyClaim(ref, snap.update_time, str(data[SESSION_ID]))
            record: KeyDoc = {
                OWNER: principal,
                FINGERPRINT: fingerprint,
                SESSION_ID: session_id,
                STATE: RUNNING,
                RUNNING_UNTIL: until,
                RESPONSE: None,
                TTL_FIELD: max(now + self._ttl, until),
                WRITER: token,
            }
            target = session_id
            fields: dict[str, Any] | None = None  # None: create the record
            if data is None:
                pass
            elif data[TTL_FIELD] <= now or self._of_another_life(data, now):
                # Expired, or the session life it answered for is gone: as if never used
                # (a key never replays a reply of a deleted session).
                fields = dict(record) | {GENERATION: firestore.DELETE_FIELD}
            else:
                if data[FINGERPRINT] != fingerprint:
                    raise errors.idempotency_key_reused()
                if data[STATE] == DONE:
                    return StoredResponse(dict(data[RESPONSE]), data[TTL_FIELD])
                if data[RUNNING_UNTIL] > now:
                    raise errors.idempotency_key_in_progress(retry_after(data[RUNNING_UNTIL], now))
                # The first attempt died mid-turn; its claim has lapsed like this record.
                target = data[SESSION_ID]
                fields = {RUNNING_UNTIL: until, TTL_FIELD: record[TTL_FIELD], WRITER: token}
            wrote = True
            try:
                if fields is None:
                    result = ref.create(dict(record), retry=self._retry, timeout=self._timeout)
                else:
                    option = self._client.write_option(last_update_time=snap.update_time)
                    result = ref.update(
                        fields, option=option, retry=self._retry, timeout=self._timeout
                    )
            except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.Conflict) as exc:
                failure = exc  # a concurrent retry got there first, or ours did: look
                continue
            except _UNKNOWN as exc:
                failure = exc  # perhaps landed, perhaps on its way: look, write again
                continue
            return KeyClaim(ref, result.update_time, target)
        if failure is not None and not isinstance(failure, _REFUSED):
            raise StoreUnavailable(type(failure).__name__) from failure
        raise errors.idempotency_key_in_progress(1)

    def _of_another_life(self, data: dict[str, Any], now: dt.datetime) -> bool:
        """A done record whose session life is no longer the session's: deleted (and
        perhaps re-created) while the record's clean-up did not happen. One read, paid
        only on a replay."""
        generation = data.get(GENERATION)
        if data.get(STATE) != DONE or not isinstance(generation, str):
            return False
        ref = self._client.collection(SESSIONS).document(doc_id(str(data[SESSION_ID])))
        with outage_as_unavailable():
            found = ref.get(
                [GENERATION, TURNS, TTL_FIELD], retry=self._retry, timeout=self._timeout
            )
        session = found.to_dict() if found.exists else None
        live = session is not None and session.get(TURNS, 0) > 0 and session[TTL_FIELD] > now
        return not live or session is None or session.get(GENERATION) != generation

    def completion(
        self, claim: KeyClaim, response: dict[str, Any], expire_at: dt.datetime, generation: str
    ) -> Callable[[Any], None]:
        """The write that marks the record done with ``response`` in the session life
        ``generation``, for the turn's own commit. Raises TurnTooLarge when the
        response cannot fit the record."""
        if len(json.dumps(response).encode()) > MAX_STORED_RESPONSE_BYTES:
            raise TurnTooLarge("reply too large to store for Idempotency-Key")

        def write(batch: Any) -> None:
            batch.update(
                claim.ref,
                {STATE: DONE, RESPONSE: response, TTL_FIELD: expire_at, GENERATION: generation},
                option=self._client.write_option(last_update_time=claim.update_time),
            )

        return write

    def abandon(self, claim: KeyClaim, time_left: float | None = None) -> None:
        """Forget a record whose turn failed, so a retry runs. Best effort, within
        ``time_left`` seconds when given (none left: skipped): if this does not happen,
        the record lapses at ``running_until``. Conditioned on the record as the turn
        left it, so it also fences a turn commit still on its way (that commit is
        conditioned on the same record)."""
        timeout = self._timeout if time_left is None else min(self._timeout, time_left)
        if timeout < 0.05:
            return
        with contextlib.suppress(gexc.GoogleAPIError):
            claim.ref.delete(
                option=self._client.write_option(last_update_time=claim.update_time),
                retry=bounded_retry(timeout),
                timeout=timeout,
            )

    def forget_session(self, session_id: str, owner: str, generation: str | None) -> None:
        """Delete the records of a deleted session's life ``generation``. Best effort:
        TTL removes any left behind. Records of another life of the id (one begun after
        the delete) are left alone."""
        if generation is None:
            return  # a session from before generations: its records expire by TTL
        query = (
            self._client.collection(IDEMPOTENCY)
            .where(filter=FieldFilter(SESSION_ID, "==", session_id))
            .limit(300)
        )
        try:
            for _ in range(20):
                snaps = list(query.stream(retry=self._retry, timeout=self._timeout))
                mine = [s for s in snaps if _of_life(s.to_dict() or {}, owner, generation)]
                if mine:
                    batch = self._client.batch()
                    for snap in mine:
                        batch.delete(snap.reference)
                    batch.commit(retry=self._retry, timeout=self._timeout)
                if len(snaps) < 300 or len(mine) < len(snaps):
                    return
        except gexc.GoogleAPIError as exc:
            log.warning("idempotency records of a deleted session kept: %s", type(exc).__name__)


def _of_life(record: dict[str, Any], owner: str, generation: str) -> bool:
    return record.get(OWNER) == owner and record.get(GENERATION) == generation


def _doc_id(principal: str, key: str) -> str:
    return hashlib.sha256(f"{principal}\n{key}".encode("utf-8", "surrogateescape")).hexdigest()
