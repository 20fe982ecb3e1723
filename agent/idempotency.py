"""``Idempotency-Key`` on ``POST /chat``: a retried request never runs the agent twice.

One record per (principal, key), at ``agent_idempotency/{sha256(principal, key)}``::

    owner        str        the principal (keys of different callers never meet)
    fingerprint  str        SHA-256 of the request (message and session_id)
    session_id   str        the session the request runs on (chosen before the run,
                            so a retry without session_id lands on the same one)
    state        str        "running" or "done"
    running_until Timestamp when a running record's turn would have timed out
    response     map|null   when done: session_id, reply, new_session, usage
    expire_at    Timestamp  TTL field: when done, the session's expire_at as of
                            that turn, so a key lives no longer than its session

* Same key, same body: while the first request runs, 409
  ``idempotency_key_in_progress`` with ``Retry-After``; once it succeeded, its stored
  200 response, with ``Idempotent-Replayed: true``, and the agent does not run.
* Same key, different body: 422 ``idempotency_key_reused``.
* The record becomes "done" in the very commit that stores the turn
  (``HistoryStore.commit``'s ``extra_writes``): there is no moment at which the
  turn is stored but the key is not, so a crash cannot lead to a second run.
* A failed turn stores nothing and deletes its record, so a retry runs again. If the
  instance dies mid-turn, the record lapses with the turn's claim at
  ``running_until``; a retry after that takes it over and runs the turn, once.
* A stored response must fit one document: with a key, a reply over
  ``MAX_STORED_RESPONSE_BYTES`` fails the turn (502) and nothing is stored.
* Deleting a session deletes its keys' records (they hold its replies).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from werkzeug.datastructures import Headers

from . import errors
from .firestore_calls import OUTAGE, StoreUnavailable, bounded_retry
from .firestore_session import utc_now
from .history_store import IDEMPOTENCY, TTL_FIELD, TurnTooLarge
from .results import ResultLink
from .streaming import StreamEvent
from .turn import TurnOutcome, TurnRunner
from .validation import ChatRequest

log = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_STORED_RESPONSE_BYTES = 768 * 1024
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the IETF draft's examples


def parse_key(headers: Headers) -> str | None:
    key = headers.get(KEY_HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise errors.bad_request(
            "invalid_idempotency_key",
            f"{KEY_HEADER} must be 1-255 printable ASCII characters without spaces.",
        )
    return key


def fingerprint(chat: ChatRequest) -> str:
    canonical = json.dumps({"message": chat.message, "session_id": chat.session_id})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def in_progress(retry_after: int) -> errors.ApiError:
    return errors.ApiError(
        409,
        "idempotency_key_in_progress",
        "A request with this Idempotency-Key is still running; retry to get its response.",
        {"Retry-After": str(retry_after)},
    )


def key_reused() -> errors.ApiError:
    return errors.ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body.",
    )


@dataclass(frozen=True)
class Ticket:
    """Our hold on a running record."""

    ref: Any
    update_time: Any
    session_id: str


class IdempotencyStore:
    def __init__(
        self, client: firestore.Client, *, ttl_seconds: int, timeout_seconds: float
    ) -> None:
        self._client = client
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    def begin(
        self, principal: str, key: str, print_: str, session_id: str, until: dt.datetime
    ) -> Ticket | TurnOutcome:
        """Our ticket to run the turn, or the stored outcome to replay; raises the
        409/422 ApiErrors above, or StoreUnavailable."""
        now = utc_now()
        ref = self._client.collection(IDEMPOTENCY).document(_doc_id(principal, key))
        try:
            snap = ref.get(retry=self._retry, timeout=self._timeout)
            data = snap.to_dict() if snap.exists else None
            record = {
                "owner": principal,
                "fingerprint": print_,
                "session_id": session_id,
                "state": "running",
                "running_until": until,
                "response": None,
                TTL_FIELD: now + self._ttl,
            }
            if data is None:
                result = ref.create(record, retry=self._retry, timeout=self._timeout)
            elif data[TTL_FIELD] <= now:  # expired: as if never used
                result = ref.update(
                    record,
                    option=self._client.write_option(last_update_time=snap.update_time),
                    retry=self._retry,
                    timeout=self._timeout,
                )
            else:
                if data["fingerprint"] != print_:
                    raise key_reused()
                if data["state"] == "done":
                    return _outcome(data["response"], data[TTL_FIELD])
                if data["running_until"] > now:
                    raise in_progress(_retry_after(data["running_until"], now))
                # The first attempt died mid-turn; its claim has lapsed like this record.
                session_id = data["session_id"]
                result = ref.update(
                    {"running_until": until, TTL_FIELD: now + self._ttl},
                    option=self._client.write_option(last_update_time=snap.update_time),
                    retry=self._retry,
                    timeout=self._timeout,
                )
        except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.Conflict):
            raise in_progress(1) from None  # a concurrent retry got there first
        except OUTAGE as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return Ticket(ref, result.update_time, session_id)

    def completion(self, ticket: Ticket) -> Callable[[Any, TurnOutcome], None]:
        """The write that marks the record done, for the turn's own commit."""

        def write(batch: Any, outcome: TurnOutcome) -> None:
            response = {
                "session_id": outcome.session_id,
                "reply": outcome.reply,
                "new_session": outcome.new_session,
                "usage": outcome.usage,
                # A replay returns the URL as first signed; once it has expired the
                # client re-signs through GET /sessions/<id>/results/<turn_id>.
                "result": outcome.result.as_json() if outcome.result else None,
                "warnings": list(outcome.warnings),
            }
            if len(json.dumps(response).encode()) > MAX_STORED_RESPONSE_BYTES:
                raise TurnTooLarge("reply too large to store for Idempotency-Key")
            batch.update(
                ticket.ref,
                {"state": "done", "response": response, TTL_FIELD: outcome.expire_at},
                option=self._client.write_option(last_update_time=ticket.update_time),
            )

        return write

    def abandon(self, ticket: Ticket) -> None:
        """Forget a record whose turn failed, so a retry runs. Best effort: if this
        fails, the record lapses at ``running_until``."""
        with contextlib.suppress(gexc.GoogleAPIError):
            ticket.ref.delete(
                option=self._client.write_option(last_update_time=ticket.update_time),
                retry=self._retry,
                timeout=self._timeout,
            )

    def forget_session(self, session_id: str, owner: str) -> None:
        """Delete the records of a deleted session. Best effort: TTL removes any
        left behind."""
        query = (
            self._client.collection(IDEMPOTENCY)
            .where(filter=FieldFilter("session_id", "==", session_id))
            .limit(300)
        )
        try:
            for _ in range(20):
                snaps = list(query.stream(retry=self._retry, timeout=self._timeout))
                mine = [s for s in snaps if (s.to_dict() or {}).get("owner") == owner]
                if mine:
                    batch = self._client.batch()
                    for snap in mine:
                        batch.delete(snap.reference)
                    batch.commit(retry=self._retry, timeout=self._timeout)
                if len(snaps) < 300 or len(mine) < len(snaps):
                    return
        except gexc.GoogleAPIError as exc:
            log.warning("idempotency records of a deleted session kept: %s", type(exc).__name__)


def run_once(
    store: IdempotencyStore,
    turns: TurnRunner,
    *,
    principal: str,
    key: str,
    chat: ChatRequest,
    session_id: str,
    started: float,
    budget_seconds: float,
) -> tuple[TurnOutcome, bool]:
    """Run the turn of ``chat`` at most once for ``key``: (outcome, replayed)."""
    ticket = _begin(store, principal, key, chat, session_id, started + budget_seconds)
    if isinstance(ticket, TurnOutcome):
        return ticket, True
    try:
        outcome = turns.run(
            ticket.session_id,
            chat.message,
            started,
            owner=principal,
            on_commit=store.completion(ticket),
        )
    except BaseException:
        store.abandon(ticket)
        raise
    return outcome, False


def _begin(
    store: IdempotencyStore,
    principal: str,
    key: str,
    chat: ChatRequest,
    session_id: str,
    deadline: float,
) -> Ticket | TurnOutcome:
    """The record for ``key`` held until the turn's ``deadline`` (monotonic), or the
    stored outcome to replay."""
    until = utc_now() + dt.timedelta(seconds=deadline - time.monotonic())
    try:
        return store.begin(principal, key, fingerprint(chat), session_id, until)
    except StoreUnavailable:
        raise errors.storage_unavailable() from None


def stream_once(
    store: IdempotencyStore,
    turns: TurnRunner,
    *,
    principal: str,
    key: str,
    chat: ChatRequest,
    session_id: str,
    started: float,
    budget_seconds: float,
    idle_seconds: float,
) -> tuple[Generator[StreamEvent | TurnOutcome | None, None, None], bool]:
    """``run_once`` for a streamed turn: (events, replayed). A replay is the stored
    outcome alone; a turn that does not reach its outcome (a failure, or a client
    that went away) gives its key up, so a retry runs again."""
    ticket = _begin(store, principal, key, chat, session_id, started + budget_seconds)
    if isinstance(ticket, TurnOutcome):
        return _replay(ticket), True
    try:
        events = turns.stream(
            ticket.session_id,
            chat.message,
            started,
            idle_seconds,
            owner=principal,
            on_commit=store.completion(ticket),
        )
    except BaseException:
        store.abandon(ticket)
        raise
    return _abandon_unless_done(events, store, ticket), False


def _abandon_unless_done(
    events: Generator[StreamEvent | TurnOutcome | None, None, None],
    store: IdempotencyStore,
    ticket: Ticket,
) -> Generator[StreamEvent | TurnOutcome | None, None, None]:
    done = False
    try:
        for item in events:
            done = isinstance(item, TurnOutcome)
            yield item
    finally:
        events.close()
        if not done:
            store.abandon(ticket)


def _replay(outcome: TurnOutcome) -> Generator[StreamEvent | TurnOutcome | None, None, None]:
    yield outcome


def _doc_id(principal: str, key: str) -> str:
    return hashlib.sha256(f"{principal}\n{key}".encode("utf-8", "surrogateescape")).hexdigest()


def _outcome(response: dict[str, Any], expire_at: dt.datetime) -> TurnOutcome:
    return TurnOutcome(
        session_id=response["session_id"],
        reply=response["reply"],
        new_session=response["new_session"],
        usage=dict(response["usage"]),
        expire_at=expire_at,
        result=ResultLink.from_json(response["result"]) if response.get("result") else None,
        warnings=tuple(response.get("warnings") or ()),
    )


def _retry_after(until: dt.datetime, now: dt.datetime) -> int:
    return max(1, min(5, int((until - now).total_seconds()) + 1))
