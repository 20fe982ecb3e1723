"""The store's interface: what the turn and the routes need of a history backend.

Two backends satisfy it: Firestore (``history.py``, ``idempotency_records.py``,
``spend.py``), the deployed one, and SQLite (``sqlite_history.py``,
``sqlite_idempotency.py``, ``sqlite_spend.py``), a single
file for a developer's machine without the Firestore emulator. ``agent/service.py``
picks one by ``HISTORY_BACKEND``; nothing else knows which it got.

Both keep the same promises, checked by one contract test suite run against each
(``tests/test_store_contract.py``): a turn claims its session (a concurrent claim gets
``SessionBusy`` at once), commits all its items atomically or nothing, and a claim lapses
at the turn's deadline; expired sessions read as absent; a live session of another owner
is absent to everyone else (``SessionTaken`` on claim); each life of an id has its own
``generation`` (deletes report the one they removed); a running summary and the token
calibration are stored with the history, and so are its usage totals, written by the
turn's commit; so is a run paused for approval, which blocks other turns until a claim
naming it resumes it (``paused_runs.py``); an approved tool call is recorded before it
runs, once (``tool_runs.py``); an Idempotency-Key's record is marked done, with the
turn's generation, in the turn's own commit (``extra_writes``); a principal's spend of
the day is held and charged per turn apart from any commit (``spend.py``). The data
types and errors are the Firestore module's (``History``, ``Claim``, ``Deleted``,
``SessionBusy``, ...), shared as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from agent.store.history import Claim, Deleted, History, Item, SessionInfo, Summary, UsageTotals
from agent.store.idempotency_records import KeyClaim, StoredResponse
from agent.store.paused_runs import Decision, PausedRun
from agent.store.run_records import CancelAction, LoggedEvent, NewEvent, Run, RunStatus
from agent.store.spend import DaySpend
from agent.store.tool_runs import EarlierRun, ToolCall


class HistoryBackend(Protocol):
    """Conversation histories: read, claim for a turn, commit or release, delete."""

    def load(
        self, session_id: str, now: dt.datetime, owner: str | None = None
    ) -> History | None: ...

    def info(self, session_id: str, now: dt.datetime) -> SessionInfo | None: ...

    def owner_of(self, session_id: str, now: dt.datetime) -> str | None: ...

    def current_generation(self, session_id: str, now: dt.datetime) -> str | None: ...

    def paused_run(
        self, session_id: str, now: dt.datetime, owner: str | None = None
    ) -> PausedRun | None: ...

    def claim(
        self,
        session_id: str,
        now: dt.datetime,
        until: dt.datetime,
        owner: str | None = None,
        *,
        resume: str | None = None,
    ) -> Claim: ...

    def reclaim(
        self, session_id: str, token: str, now: dt.datetime, owner: str | None = None
    ) -> Claim:
        """The claim ``token`` still holds, unexpired, as a fresh ``Claim`` of the session
        as it is now (its history loaded as ``claim`` loads it; on Firestore the current
        document's ``update_time`` as the commit's precondition): how a background run's
        later slices continue the claim its first slice took. Writes nothing; raises
        ClaimLost when the token holds the session no more (lapsed, released, taken over,
        another owner's)."""
        ...

    def commit(
        self,
        claim: Claim,
        new_items: Sequence[Item],
        now: dt.datetime,
        *,
        replace: bool = False,
        count_turn: bool = True,
        extra_writes: Callable[[Any, dt.datetime], None] | None = None,
        time_left: float | None = None,
        summary: Summary | None = None,
        token_ratio: float | None = None,
        paused: PausedRun | None = None,
        decisions: Sequence[Decision] = (),
        totals: UsageTotals | None = None,
    ) -> History:
        """``extra_writes(batch, expire_at)`` joins the commit: ``batch`` is whatever the
        backend commits with, and only the same backend's IdempotencyBackend writes to it.
        Raises ClaimLost, CommitFailed or CommitUnknown (never on SQLite, whose commits
        are local and atomic), TurnTooLarge."""
        ...

    def release(self, claim: Claim) -> None: ...

    def delete(self, session_id: str, now: dt.datetime, owner: str | None = None) -> Deleted: ...


class IdempotencyBackend(Protocol):
    """Idempotency-Key records (the promises: ``idempotency_records.py``'s header)."""

    def begin(
        self, principal: str, key: str, fingerprint: str, session_id: str, until: dt.datetime
    ) -> KeyClaim | StoredResponse: ...

    def completion(
        self, claim: KeyClaim, response: dict[str, Any], expire_at: dt.datetime, generation: str
    ) -> Callable[[Any], None]: ...

    def abandon(self, claim: KeyClaim, time_left: float | None = None) -> None: ...

    def forget_session(self, session_id: str, owner: str, generation: str | None) -> None: ...


class ToolRunBackend(Protocol):
    """The at-most-once guard of approved tool calls (``tool_runs.py``)."""

    def start(
        self,
        session_id: str,
        generation: str,
        call: ToolCall,
        now: dt.datetime,
        keep_until: dt.datetime | None = None,
    ) -> EarlierRun | None: ...

    def keep(
        self, session_id: str, generation: str, calls: Sequence[ToolCall], until: dt.datetime
    ) -> None: ...

    def finish(self, session_id: str, generation: str, call: ToolCall, output: str) -> None: ...

    def earlier(
        self, session_id: str, generation: str, calls: Sequence[ToolCall]
    ) -> dict[str, EarlierRun]:
        """The existing records of ``calls``, by call id; reads only."""
        ...

    def used(self, session_id: str, generation: str, call_ids: Iterable[str]) -> set[str]:
        """Which of ``call_ids`` a record of this life carries, in any pause."""
        ...

    def forget_session(self, session_id: str, generation: str) -> None: ...


class SpendBackend(Protocol):
    """A principal's spend per UTC day, one record per admitted turn (the promises:
    ``spend.py``'s header). Amounts in integer micro-dollars."""

    def charged(self, principal: str, day: dt.date) -> DaySpend:
        """What the principal's settled turns of ``day`` were charged, and what the
        turns not settled hold."""
        ...

    def spent(self, principal: str, day: dt.date) -> float:
        """US dollars the principal's settled turns of ``day`` were charged."""
        ...

    def hold(self, principal: str, day: dt.date, turn: str, micros: int) -> DaySpend:
        """Turn ``turn`` holds ``micros`` of that day, apart from any commit; returns what
        was charged and held before this hold (the order of admissions)."""
        ...

    def settle(self, principal: str, day: dt.date, turn: str, cost_micros: int, calls: int) -> None:
        """Turn ``turn`` ended: its hold is replaced by what it was charged."""
        ...


class RunBackend(Protocol):
    """Background runs and their event logs (the promises: ``run_records.py``)."""

    def create(self, run: Run, first: Sequence[NewEvent], *, enqueue: bool) -> Run:
        """Store a new run with its first events; ``RunInFlight`` when its session has a
        run not ended and ``enqueue`` is false; with ``enqueue``, the run's ``after`` is
        set to the session's last run. A retry of the same ``run_id`` returns the run."""
        ...

    def get(self, run_id: str, now: dt.datetime, owner: str | None = None) -> Run | None:
        """The run; None when absent, expired, or (with ``owner``) another's."""
        ...

    def take(self, run_id: str, step: int, token: str, now: dt.datetime, until: dt.datetime) -> Run:
        """Lease the run to work from ``step`` until ``until`` under ``token`` (the same
        token renews). ``StepDone`` when ``step`` is behind the run's, ``RunFinished``
        when it ended, ``LeaseHeld`` while another token's lease is unexpired."""
        ...

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
        """Keep a step: state, usage and events in one atomic write, under the lease
        (``LeaseLost`` otherwise). Returns the run as stored (its ``cancel`` included)."""
        ...

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
        """Set a terminal status or ``approval_required`` with its events and release the
        lease (``token`` None: a run no worker holds, such as a queued one cancelled).
        Returns the run and, when it ended, the next run queued behind it, if any."""
        ...

    def cancel(self, run_id: str, action: CancelAction, now: dt.datetime) -> Run:
        """Record a cancel request (the first one counts); ``RunFinished`` if ended."""
        ...

    def resume(self, run_id: str, decisions: dict[str, Any], now: dt.datetime) -> Run:
        """An ``approval_required`` run is decided: it is queued again with the decisions
        in ``request["resume"]`` and a ``status`` event; ``RunFinished`` if it ended."""
        ...

    def events(self, run_id: str, after: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` events with ``seq`` above ``after``, in order; reads only those."""
        ...
