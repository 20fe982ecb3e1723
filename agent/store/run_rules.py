"""The run store's rules, written once for both backends (``runs.py`` on Firestore,
``sqlite_runs.py``): what each operation of ``RunBackend`` does to a run record and to
its session's queue, as pure functions of what was read. Each backend reads, applies
one of these and writes the result atomically (a transaction on SQLite, a commit
conditioned on what it read on Firestore); a write refused because the record changed
is read and decided again, which is also how a write whose reply was lost finds that it
landed.

Semantics the engine (``agent/runs``) relies on
-----------------------------------------------
* ``create``: a run id that exists returns the stored run (a retry). A session's queue
  lists its runs not ended, oldest first; the first is the one in flight. A queue
  whose runs are all past their deadline is dead and counts as empty (such runs fail
  when their task next comes; none will hand the session on). A non-empty queue
  refuses a new run (``RunInFlight``) unless ``enqueue``: then the run's ``after`` is
  the last run of the queue. At most ``MAX_QUEUED`` runs wait per session.
* ``take``: absent, expired or ended is ``RunFinished`` (nothing to do);
  ``approval_required`` is ``StepDone`` (nothing to do until it is decided); a step
  behind the run's is ``StepDone``, one ahead of it ``LeaseLost`` (that task's work is
  not the run's); another token's unexpired lease is ``LeaseHeld``. The same token
  renews. A ``queued`` run becomes ``running`` and the store appends the ``status``
  event itself (take has no events of its own).
* ``checkpoint(step=n)``: ``n`` is the number of steps done after this one
  (``run.step + 1`` for one step). Under the caller's unexpired lease it keeps state,
  usage and events at once. A checkpoint that finds the run already at ``n`` or beyond
  under its own token landed before (its reply was lost): nothing is written again,
  and the stored run is returned. A terminal status is ``end``'s, not a checkpoint's.
* ``end``: under the caller's unexpired lease (``token`` None: only while no lease is
  held, else ``LeaseHeld``). A terminal status takes the run out of its session's
  queue; if it was the first, the next one is the run returned with it (and kept in
  ``next_run``). ``approval_required`` releases the lease and keeps the run first in
  its queue. An end repeated with the same status (its reply lost) writes nothing and
  returns the same pair; an ended run otherwise refuses (``RunFinished``).
* ``cancel``: the first request is kept; ended is ``RunFinished``. It ends nothing
  itself: the worker sees ``cancel`` on the run its checkpoint returns, and a queued
  run is ended by the engine with ``end(token=None)``.
* ``resume``: ``approval_required`` becomes ``queued`` with the decisions in
  ``request["resume"]``, the pending calls cleared, and a ``status`` event appended by
  the store; repeated with the same decisions it writes nothing; any other run not
  ended is ``NotPaused``.
* Expiry: ``Run.expire_at`` is the caller's (at least the deadline plus the session's
  TTL) and never slides, so the record, its events and its state expire together; an
  expired run reads as absent everywhere.

Size bounds (the same on both backends, so the engine meets them everywhere)
-----------------------------------------------------------------------------
* One event's ``data`` is at most ``MAX_EVENT_BYTES`` (32 KiB) as compact UTF-8 JSON:
  the engine splits a longer coalesced ``delta`` into several events.
* One write appends at most ``MAX_EVENTS_PER_WRITE`` (400) events of at most
  ``MAX_EVENTS_BYTES`` (1 MiB) together.
* The state is at most ``MAX_STATE_BYTES`` (2 MiB, compressed, as the engine passes it).
* ``request``, ``usage``, ``response``, ``error`` and ``pending`` together are at most
  ``MAX_RECORD_BYTES`` (384 KiB) as JSON.
Anything larger is refused with ``RunTooLarge`` before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.base.clock import retry_after
from agent.store.run_records import (
    CancelAction,
    LeaseHeld,
    LeaseLost,
    LoggedEvent,
    NewEvent,
    NotPaused,
    Run,
    RunFinished,
    RunInFlight,
    RunStatus,
    RunTooLarge,
    StepDone,
)

MAX_EVENT_BYTES = 32 * 1024
MAX_EVENTS_PER_WRITE = 400
MAX_EVENTS_BYTES = 1024 * 1024
MAX_STATE_BYTES = 2 * 1024 * 1024
MAX_RECORD_BYTES = 384 * 1024
MAX_QUEUED = 32
STATUS_EVENT = "status"


@dataclass(frozen=True)
class Queued:
    """One run in its session's queue."""

    run_id: str
    deadline: dt.datetime


Queue = tuple[Queued, ...]


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def check_events(events: Sequence[NewEvent]) -> list[str]:
    """Each event's data as JSON; ``RunTooLarge`` past the bounds."""
    if len(events) > MAX_EVENTS_PER_WRITE:
        raise RunTooLarge(f"{len(events)} events in one write (at most {MAX_EVENTS_PER_WRITE})")
    texts = [to_json(event.data) for event in events]
    total = 0
    for event, text in zip(events, texts, strict=True):
        size = len(text.encode())
        if size > MAX_EVENT_BYTES:
            raise RunTooLarge(f"a {event.type} event of {size} bytes (at most {MAX_EVENT_BYTES})")
        total += size
    if total > MAX_EVENTS_BYTES:
        raise RunTooLarge(f"{total} bytes of events in one write (at most {MAX_EVENTS_BYTES})")
    return texts


def check_record(run: Run) -> None:
    """``RunTooLarge`` when the run's state or its other large fields pass their bounds."""
    if run.state is not None and len(run.state) > MAX_STATE_BYTES:
        raise RunTooLarge(f"a state of {len(run.state)} bytes (at most {MAX_STATE_BYTES})")
    fields = (run.request, run.usage, run.response, run.error, run.pending)
    size = sum(len(to_json(value).encode()) for value in fields)
    if size > MAX_RECORD_BYTES:
        raise RunTooLarge(f"a run record of {size} bytes (at most {MAX_RECORD_BYTES})")


def logged(run: Run, events: Sequence[NewEvent]) -> tuple[Run, list[LoggedEvent]]:
    """The run with ``events`` appended: their sequence numbers follow the run's last."""
    stamped = [
        LoggedEvent(seq=run.seq + n, type=event.type, data=event.data)
        for n, event in enumerate(events, start=1)
    ]
    return dataclasses.replace(run, seq=run.seq + len(events)), stamped


def status_event(status: RunStatus) -> NewEvent:
    return NewEvent(type=STATUS_EVENT, data={"status": status})


def is_live(run: Run | None, now: dt.datetime) -> bool:
    return run is not None and run.expire_at > now


# -- the session's queue -------------------------------------------------------------


def admitted(queue: Queue, run: Run, now: dt.datetime, *, enqueue: bool) -> tuple[Queue, Run]:
    """The queue with ``run`` added last, and the run with its ``after``; RunInFlight
    when the session has a run in flight and ``enqueue`` is false."""
    if all(entry.deadline <= now for entry in queue):
        queue = ()  # dead: every run of it is past its deadline
    if queue and not enqueue:
        raise RunInFlight(queue[0].run_id)
    if len(queue) >= MAX_QUEUED:
        raise RunInFlight(f"{len(queue)} runs already wait on this session")
    after = queue[-1].run_id if queue else None
    return (*queue, Queued(run.run_id, run.deadline)), dataclasses.replace(run, after=after)


def dequeued(queue: Queue, run_id: str) -> tuple[Queue, str | None]:
    """The queue without ``run_id``, and the run that is first now if ``run_id`` was."""
    rest = tuple(entry for entry in queue if entry.run_id != run_id)
    was_first = bool(queue) and queue[0].run_id == run_id
    return rest, (rest[0].run_id if was_first and rest else None)


# -- a run's record --------------------------------------------------------------------


def taken(
    run: Run | None, step: int, token: str, now: dt.datetime, until: dt.datetime
) -> tuple[Run, list[NewEvent]]:
    """The run leased to ``token`` until ``until``, and the events that go with it."""
    if run is None or not is_live(run, now) or run.ended:
        raise RunFinished(run.run_id if run else "absent")
    if run.status == "approval_required" or step < run.step:
        raise StepDone(run.step)
    if step > run.step:
        raise LeaseLost(f"step {step} is ahead of the run's {run.step}")
    if run.lease not in (None, token) and run.lease_until is not None and run.lease_until > now:
        raise LeaseHeld(retry_after(run.lease_until, now))
    events: list[NewEvent] = []
    status = run.status
    if status == "queued":
        status = "running"
        events.append(status_event(status))
    leased = dataclasses.replace(run, lease=token, lease_until=until, status=status, updated_at=now)
    return leased, events


def checkpointed(
    run: Run | None,
    token: str,
    now: dt.datetime,
    *,
    step: int,
    state: bytes | None,
    usage: dict[str, Any],
    status: RunStatus | None,
    claim_token: str | None,
    generation: str | None,
) -> Run | None:
    """The run after the checkpoint; None when it already landed (nothing to write)."""
    if status is not None and status in ("completed", "failed", "cancelled"):
        raise ValueError("a terminal status is end's, not a checkpoint's")
    if run is None or not is_live(run, now) or run.ended:
        raise RunFinished(run.run_id if run else "absent")
    if run.lease != token:
        raise LeaseLost(run.run_id)
    if step <= run.step:
        return None  # ours, landed already: a retry after a lost reply
    if run.lease_until is None or run.lease_until <= now:
        raise LeaseLost(run.run_id)
    return dataclasses.replace(
        run,
        step=step,
        state=state,
        usage=usage,
        status=status or run.status,
        claim_token=claim_token or run.claim_token,
        generation=generation or run.generation,
        updated_at=now,
    )


def ended(
    run: Run | None,
    token: str | None,
    now: dt.datetime,
    *,
    status: RunStatus,
    usage: dict[str, Any] | None,
    response: dict[str, Any] | None,
    error: dict[str, Any] | None,
    pending: dict[str, Any] | None,
) -> Run | None:
    """The run after ``end`` (its lease released); None when this end already landed."""
    if status in ("queued", "running"):
        raise ValueError(f"end sets a terminal status or approval_required, not {status}")
    if run is None or not is_live(run, now):
        raise RunFinished(run.run_id if run else "absent")
    if run.status == status and run.lease is None and run.released_by == token:
        return None  # this very end, repeated
    if run.ended:
        raise RunFinished(run.run_id)
    lease_held = run.lease is not None and run.lease_until is not None and run.lease_until > now
    if token is None:
        if lease_held:
            assert run.lease_until is not None
            raise LeaseHeld(retry_after(run.lease_until, now))
    elif run.lease != token or not lease_held:
        raise LeaseLost(run.run_id)
    return dataclasses.replace(
        run,
        status=status,
        lease=None,
        lease_until=None,
        released_by=token,
        usage=run.usage if usage is None else usage,
        response=response,
        error=error,
        pending=pending if status == "approval_required" else None,
        updated_at=now,
    )


def cancelled(run: Run | None, action: CancelAction, now: dt.datetime) -> Run | None:
    """The run with the cancel request; None when one is recorded already."""
    if run is None or not is_live(run, now) or run.ended:
        raise RunFinished(run.run_id if run else "absent")
    if run.cancel is not None:
        return None
    if action not in ("interrupt", "rollback"):
        raise ValueError(f"unknown cancel action {action!r}")
    return dataclasses.replace(run, cancel=action, updated_at=now)


def resumed(
    run: Run | None, decisions: dict[str, Any], now: dt.datetime
) -> tuple[Run, list[NewEvent]] | None:
    """The decided run queued again, with its status event; None when it already was."""
    if run is None or not is_live(run, now) or run.ended:
        raise RunFinished(run.run_id if run else "absent")
    if run.status != "approval_required":
        if run.request.get("resume") == decisions:
            return None
        raise NotPaused(run.run_id)
    request = {**run.request, "resume": decisions}
    queued = dataclasses.replace(
        run, status="queued", request=request, pending=None, updated_at=now
    )
    return queued, [status_event("queued")]
