"""A background run as the store keeps it: the record, its events, and the errors.

A run is one turn done in the background (``agent/runs``): queued, then worked on by
tasks of the queue, each of which takes the run's lease, does some steps (a step is one
model call and the tool calls it asked for) and checkpoints. Both run stores
(``runs.py`` on Firestore, ``sqlite_runs.py``) keep these types and these promises,
checked by one contract suite (``tests/test_run_store_contract.py``):

* ``create`` is idempotent by run id (a retry whose first reply was lost finds its own
  record) and keeps at most one run in flight per session: a session with a run not
  yet ended refuses another (``RunInFlight``) unless it is queued behind (``enqueue``),
  first in, first out.
* Only the holder of an unexpired lease checkpoints or ends a run; a checkpoint appends
  the step's events and replaces the state in one atomic write, so a reader never sees
  the events of a step whose state was not kept, and a step repeated after a lost
  worker never adds its events twice.
* Event sequence numbers are 1, 2, 3, ... per run with no gap; ``events(after=n)``
  returns those after ``n`` in order. Events and the record expire together.
* A cancel is recorded once; a run that ended refuses it (``RunFinished``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["queued", "running", "approval_required", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
CancelAction = Literal["interrupt", "rollback"]


@dataclass(frozen=True, kw_only=True)
class LoggedEvent:
    """One event of a run's log, as ``GET /runs/<id>/events`` sends it."""

    seq: int
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """An event to append: the store gives it its sequence number."""

    type: str
    data: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Run:
    """A background run's record."""

    run_id: str
    session_id: str
    owner: str | None
    """The principal that submitted it: only it may read, follow or cancel it."""
    status: RunStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    expire_at: dt.datetime
    """TTL: the record and its events go together, never before the session."""
    deadline: dt.datetime
    """Submission plus ``RUN_MAX_SECONDS``: past it the run fails."""
    request: dict[str, Any] = field(default_factory=dict)
    """What to run: ``message`` (the user's) and how to deliver it (``target`` URL for
    the local queue, ``webhook``). Decisions that resume a paused run go in ``resume``."""
    claim_token: str | None = None
    """The session claim the run holds from its start to its end."""
    generation: str | None = None
    """The life of the session the run belongs to."""
    step: int = 0
    """Steps checkpointed so far; the next task starts at this step."""
    state: bytes | None = None
    """The SDK's run state after the last checkpointed step (compressed JSON)."""
    usage: dict[str, Any] = field(default_factory=dict)
    """Usage of the run so far, in the response body's shape."""
    seq: int = 0
    """Sequence number of the last event logged."""
    lease: str | None = None
    lease_until: dt.datetime | None = None
    cancel: CancelAction | None = None
    response: dict[str, Any] | None = None
    """When ``completed``: the body a foreground ``POST /chat`` would have answered."""
    error: dict[str, Any] | None = None
    """When ``failed``: ``{"code", "message"}``."""
    pending: dict[str, Any] | None = None
    """When ``approval_required``: ``{"pause_id", "pending_approvals"}``."""
    after: str | None = None
    """The run of the same session this one waits behind (``multitask: enqueue``)."""
    released_by: str | None = None
    """The lease token of the ``end`` that last released the run: a retried end (its
    reply lost) recognises itself and writes nothing again."""
    next_run: str | None = None
    """Once ended: the run queued behind it that ``end`` handed the session to."""

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class RunStoreError(Exception):
    """A run store refused an operation."""


class RunInFlight(RunStoreError):
    """The session has a run that has not ended (and the new one was not enqueued)."""


class RunFinished(RunStoreError):
    """The run has ended: it cannot be cancelled, leased or checkpointed."""


class LeaseHeld(RunStoreError):
    """Another worker's lease on the run has not expired."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class StepDone(RunStoreError):
    """The step a task was sent for is already checkpointed: a duplicate delivery."""


class LeaseLost(RunStoreError):
    """The caller's lease expired or was taken over: its work is not kept."""


class NotPaused(RunStoreError):
    """A resume of a run that is not waiting for approval (and was not resumed so)."""


class RunTooLarge(RunStoreError):
    """A run's record, state or events exceed the store's bounds (``run_rules.py``):
    nothing was written."""
