"""``Idempotency-Key`` on ``POST /chat``: a retried request never runs the agent twice.

The records and their guarantees are ``agent/store/idempotency_records.py``. Here a
turn is run under a key: a replay returns the stored outcome, a first run marks the
record done in the turn's own commit, and a turn that fails (or a streamed turn whose
reader goes away) gives its key up so that a retry runs again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

from agent.runtime.streaming import RunEvent
from agent.store.backend import IdempotencyBackend
from agent.store.idempotency_records import KeyClaim, StoredResponse
from agent.turn.approvals import Resume
from agent.turn.outcome import TurnOutcome
from agent.turn.runner import TurnRunner
from agent.turn.store_errors import store_errors_as_api_errors

TurnEvents = Generator[RunEvent | TurnOutcome | None, None, None]


def fingerprint(message: str | Resume, session_id: str | None) -> str:
    """SHA-256 of what makes two requests the same request: a message, or decisions."""
    said: object = message if isinstance(message, str) else message.fingerprint()
    canonical = json.dumps({"message": said, "session_id": session_id})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def run_once(
    store: IdempotencyBackend,
    turns: TurnRunner,
    *,
    principal: str,
    key: str,
    message: str | Resume,
    requested_session_id: str | None,
    session_id: str,
    started: float,
    budget_seconds: float,
    request_id: str | None = None,
) -> tuple[TurnOutcome, bool]:
    """Run the turn at most once for ``key``: (outcome, replayed). ``session_id`` is
    the id to use when the request named none (``requested_session_id``)."""
    deadline = started + budget_seconds
    claim = _begin(store, principal, key, message, requested_session_id, session_id, deadline)
    if isinstance(claim, TurnOutcome):
        return claim, True
    with _abandoned_on_failure(store, claim, deadline):
        outcome = turns.run(
            claim.session_id,
            message,
            started,
            owner=principal,
            on_commit=_completion(store, claim),
            request_id=request_id,
        )
    return outcome, False


def stream_once(
    store: IdempotencyBackend,
    turns: TurnRunner,
    *,
    principal: str,
    key: str,
    message: str | Resume,
    requested_session_id: str | None,
    session_id: str,
    started: float,
    budget_seconds: float,
    idle_seconds: float,
    request_id: str | None = None,
) -> tuple[TurnEvents, bool]:
    """``run_once`` for a streamed turn: (events, replayed). A replay is the stored
    outcome alone; a turn that does not reach its outcome (a failure, or a client
    that went away) gives its key up, so a retry runs again."""
    deadline = started + budget_seconds
    claim = _begin(store, principal, key, message, requested_session_id, session_id, deadline)
    if isinstance(claim, TurnOutcome):
        return _replay(claim), True
    with _abandoned_on_failure(store, claim, deadline):
        events = turns.stream(
            claim.session_id,
            message,
            started,
            idle_seconds,
            owner=principal,
            on_commit=_completion(store, claim),
            request_id=request_id,
        )
    return _abandon_unless_done(events, store, claim, deadline), False


@contextmanager
def _abandoned_on_failure(
    store: IdempotencyBackend, claim: KeyClaim, deadline: float
) -> Iterator[None]:
    """Gives the key up if the block raises, so that a retry runs the turn again. Within
    the turn's deadline: a turn whose commit's outcome is unknown ends at it, and its
    record lapses then anyway."""
    try:
        yield
    except BaseException:
        store.abandon(claim, deadline - time.monotonic())
        raise


def _begin(
    store: IdempotencyBackend,
    principal: str,
    key: str,
    message: str | Resume,
    requested_session_id: str | None,
    session_id: str,
    deadline: float,
) -> KeyClaim | TurnOutcome:
    """The record for ``key`` held until the turn's ``deadline`` (monotonic), or the
    stored outcome to replay."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=deadline - time.monotonic())
    with store_errors_as_api_errors():
        found = store.begin(
            principal, key, fingerprint(message, requested_session_id), session_id, until
        )
    if isinstance(found, StoredResponse):
        return TurnOutcome.from_stored(found.response, found.expire_at)
    return found


def _completion(store: IdempotencyBackend, claim: KeyClaim) -> Any:
    def write(batch: Any, outcome: TurnOutcome, generation: str) -> None:
        store.completion(claim, outcome.stored(), outcome.expire_at, generation)(batch)

    return write


def _abandon_unless_done(
    events: TurnEvents, store: IdempotencyBackend, claim: KeyClaim, deadline: float
) -> TurnEvents:
    done = False
    try:
        for item in events:
            done = isinstance(item, TurnOutcome)
            yield item
    finally:
        events.close()
        if not done:
            store.abandon(claim, deadline - time.monotonic())


def _replay(outcome: TurnOutcome) -> TurnEvents:
    yield outcome
