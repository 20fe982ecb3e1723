"""Background runs: submit, work a slice, cancel, read. The model is in docs/design.md.

* ``submit`` claims the session at once (so a foreground turn gets 409 ``session_busy``
  while a run is queued or running), stores the run with its first ``status`` event and
  enqueues its first task. ``multitask: enqueue`` on a busy session stores the run
  behind the session's last one without a claim: it claims when its turn comes.
* ``work`` is one task: it takes the run's lease (a duplicate delivery of a done step
  is a no-op, a live worker's lease a 503 the queue retries), takes the session's claim
  again (``reclaim``: nobody else wrote the session meanwhile), then steps
  (``agent/turn/stepped.py``): after each step the step's events and the run's state
  are checkpointed together, so a worker that dies resumes from the last checkpoint and
  no event is logged twice. A slice keeps stepping while ``RUN_SLICE_SECONDS`` have not
  passed since the task began, then enqueues the next task (named ``{run_id}-{step}``).
  The last step ends in the foreground turn's own commit, and the run's ``response`` is
  the body a foreground ``POST /chat`` answers.
* ``cancel`` records the request; the worker honours it at its next step boundary.
* ``follow`` reads a run's events after a sequence number and then polls for more.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

from agent.base import errors
from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.runs.events import coalesce, status_event
from agent.runs.queue import Queue, step_task
from agent.runs.webhooks import webhook_task
from agent.store.backend import HistoryBackend, RunBackend
from agent.store.history import Claim, ClaimLost, SessionBusy
from agent.store.run_records import (
    TERMINAL,
    CancelAction,
    LeaseHeld,
    LeaseLost,
    LoggedEvent,
    NewEvent,
    Run,
    RunFinished,
    RunInFlight,
    RunStatus,
    StepDone,
)
from agent.turn.outcome import TurnOutcome
from agent.turn.runner import TurnRunner
from agent.turn.stepped import Progress, SteppedTurn, open_stepped
from agent.turn.store_errors import store_errors_as_api_errors

log = logging.getLogger(__name__)

Render = Callable[[TurnOutcome], dict[str, Any]]
"""The body a foreground ``POST /chat`` answers for an outcome (``chat_response``)."""

CLAIM_SLACK_SECONDS = 120.0
"""A run holds its session until its deadline and this much more: time to end it."""
LEASE_MARGIN_SECONDS = 10.0
"""A lease outlasts its slice's turn budget by this much: the slice's last writes."""
QUEUED_RETRY_SECONDS = 2
"""Retry-After of a task whose session a foreground turn holds."""
RETRYABLE = frozenset({"storage_unavailable"})
"""Errors that leave the run as it was: the task is retried (503), the claim kept."""


class Runs:
    """The engine of background runs. One per process; thread-safe."""

    def __init__(
        self,
        *,
        runs: RunBackend,
        history: HistoryBackend,
        turns: TurnRunner,
        queue: Queue | None,
        settings: Settings,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``queue`` None: background runs are refused (on Cloud Functions without
        ``RUNS_QUEUE``: never run inside the instance)."""
        self._runs = runs
        self._history = history
        self._turns = turns
        self._queue = queue
        self._settings = settings
        self._clock = clock

    @property
    def store(self) -> RunBackend:
        return self._runs

    # -- submit ---------------------------------------------------------------------

    def submit(
        self,
        *,
        session_id: str,
        message: str,
        owner: str | None,
        target_url: str,
        enqueue: bool = False,
        webhook: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Store and enqueue a run; raises ApiError (409 ``session_busy`` when the
        session has a turn or a run in flight and ``enqueue`` is not asked)."""
        if self._queue is None:
            raise errors.ApiError(
                503,
                "runs_unavailable",
                "Background runs need a queue: set RUNS_QUEUE on Cloud Functions.",
            )
        now = self._clock()
        settings = self._settings
        deadline = now + dt.timedelta(seconds=settings.run_max_seconds)
        record = Run(
            run_id=run_id or secrets.token_urlsafe(16),
            session_id=session_id,
            owner=owner,
            status="queued",
            created_at=now,
            updated_at=now,
            expire_at=deadline + dt.timedelta(seconds=settings.session_ttl_seconds),
            deadline=deadline,
            request={
                "message": message,
                "target": target_url,
                "webhook": webhook,
            },
        )
        first = [status_event("queued")]
        until = deadline + dt.timedelta(seconds=CLAIM_SLACK_SECONDS)
        with store_errors_as_api_errors():
            try:
                claim = self._history.claim(session_id, now, until, owner)
            except SessionBusy:
                if not enqueue:
                    raise
                run = self._runs.create(_asking(record, False), first, enqueue=True)
            else:
                claimed = replace(
                    _asking(record, claim.new_session),
                    claim_token=claim.token,
                    generation=claim.generation,
                )
                try:
                    run = self._runs.create(claimed, first, enqueue=False)
                except RunInFlight:
                    self._history.release(claim)
                    if not enqueue:
                        raise errors.session_busy(QUEUED_RETRY_SECONDS) from None
                    run = self._runs.create(_asking(record, False), first, enqueue=True)
                except BaseException:
                    self._history.release(claim)
                    raise
        if run.after is None:
            self._queue.enqueue(step_task(run.run_id, run.step, target_url))
        log.info("run %s submitted", run.run_id, extra={"fields": {"run_id": run.run_id}})
        return run

    # -- reading --------------------------------------------------------------------

    def get(self, run_id: str, owner: str | None) -> Run:
        """The caller's run; 404 ``run_not_found`` when absent, expired or another's."""
        with store_errors_as_api_errors():
            run = self._runs.get(run_id, self._clock(), owner)
        if run is None or run.owner != owner:
            raise run_not_found()
        return run

    def follow(
        self,
        run_id: str,
        after: int,
        *,
        until: float,
        poll_seconds: float = 0.5,
        heartbeat_seconds: float = 15.0,
    ) -> Generator[LoggedEvent | None, None, None]:
        """The run's events after ``after``, then those to come, until the terminal
        ``status`` event; ``None`` after each ``heartbeat_seconds`` of silence. Returns
        at ``until`` (``time.monotonic()``) too: the reader reconnects."""
        quiet_since = time.monotonic()
        while True:
            with store_errors_as_api_errors():
                batch = self._runs.events(run_id, after, 200)
            for event in batch:
                yield event
                after = event.seq
                if event.type == "status" and event.data.get("status") in TERMINAL:
                    return
            now = time.monotonic()
            if batch:
                quiet_since = now
                continue
            if now >= until:
                return
            if now - quiet_since >= heartbeat_seconds:
                quiet_since = now
                yield None
            time.sleep(max(0.0, min(poll_seconds, until - now)))

    # -- cancel ---------------------------------------------------------------------

    def cancel(self, run_id: str, owner: str | None, action: CancelAction) -> Run:
        """Record a cancel (409 ``run_finished`` once the run ended). A running run stops
        at its next step boundary (its worker sees the cancel on its next checkpoint);
        a queued run, which no worker holds, is ended here, its claim released."""
        self.get(run_id, owner)
        now = self._clock()
        with store_errors_as_api_errors():
            try:
                run = self._runs.cancel(run_id, action, now)
            except RunFinished:
                raise run_finished() from None
            if run.status != "queued":
                return run
            try:
                run, following = self._runs.end(
                    run_id, None, now, status="cancelled", events=[status_event("cancelled")]
                )
            except LeaseHeld:
                return run  # a worker took it meanwhile: it sees the cancel
            except RunFinished:
                return self.get(run_id, owner)
        self._release(run)
        self._notify(run)
        if following is not None:
            self._enqueue_next(following)
        return run

    def _release(self, run: Run) -> None:
        """Best effort: give a queued run's session back (else it lapses at the run's
        deadline)."""
        if run.claim_token is None:
            return
        try:
            claim = self._history.reclaim(run.session_id, run.claim_token, self._clock(), run.owner)
            self._history.release(claim)
        except Exception:
            log.warning("run %s: its session's claim is left to lapse", run.run_id)

    # -- work -----------------------------------------------------------------------

    def work(self, run_id: str, step: int, started: float, render: Render) -> None:
        """One task: work on ``run_id`` from ``step`` for a slice. Returns when the task
        is done (also a duplicate, or a run that ended); raises ApiError 503 with
        Retry-After when it must be delivered again."""
        token = secrets.token_urlsafe(16)
        now = self._clock()
        until = now + dt.timedelta(
            seconds=self._settings.turn_budget_seconds + LEASE_MARGIN_SECONDS
        )
        with store_errors_as_api_errors():
            try:
                run = self._runs.take(run_id, step, token, now, until)
            except StepDone:
                # A duplicate, or the retry of a slice that died between its checkpoint
                # and its enqueue: the run's current task is enqueued (again: the
                # queue refuses a name it has seen, so it runs once).
                log.info("task for run %s step %d: done already", run_id, step)
                current = self._runs.get(run_id, now)
                if current is not None and current.status in ("queued", "running"):
                    self._enqueue_next(current)
                return
            except RunFinished:
                log.info("task for run %s step %d: the run has ended", run_id, step)
                ended = self._runs.get(run_id, now)
                if ended is not None:
                    self._notify(ended)  # in case the ending slice died before it did
                return
            except LeaseHeld as held:
                raise run_busy(held.retry_after) from None
        if run.status == "approval_required":
            return  # its decisions queue it again
        _Slice(self, run, token, started, render).work()

    def _enqueue_next(self, run: Run) -> None:
        assert self._queue is not None
        self._queue.enqueue(step_task(run.run_id, run.step, run.request["target"]))

    def _notify(self, run: Run) -> None:
        """A run reached a terminal status or approval_required: enqueue its webhook's
        delivery (``agent/runs/webhooks.py``), a named task, so a task retried after the
        run ended enqueues it again harmlessly (``work``'s ``RunFinished``). A failure
        to enqueue raises: the slice's task is retried, and that retry notifies."""
        if not run.request.get("webhook") or self._queue is None:
            return
        if run.status not in TERMINAL and run.status != "approval_required":
            return
        with store_errors_as_api_errors():
            self._queue.enqueue(
                webhook_task(run.run_id, run.status, run.step, run.request["target"])
            )


class _Slice:
    """One task's work on a run: claim, steps, checkpoints, and how it ends."""

    def __init__(self, runs: Runs, run: Run, token: str, started: float, render: Render) -> None:
        self.runs = runs
        self.run = run
        self.token = token
        self.started = started
        self.render = render
        settings = runs._settings
        self.slice_ends = started + settings.slice_seconds
        self.hard_deadline = started + settings.turn_budget_seconds
        self.fresh_claim: Claim | None = None

    @property
    def store(self) -> RunBackend:
        return self.runs._runs

    def work(self) -> None:
        run = self.run
        claim = self._claim()
        if claim is None:
            return
        if run.cancel is not None:
            return self._end_cancelled(None, claim)
        if self.runs._clock() >= run.deadline:
            self.runs._history.release(claim)
            return self._fail(errors.deadline_exceeded())
        progress = Progress.decode(run.state)
        try:
            stepped = open_stepped(
                self.runs._turns,
                claim,
                owner=run.owner,
                message=run.request["message"],
                progress=progress,
                started=self.started,
                first=run.step == 0,
                request_id=run.run_id,
            )
        except errors.ApiError as error:
            return self._failed(error, claim=claim)
        try:
            self._steps(stepped)
        finally:
            stepped.close()

    def _claim(self) -> Claim | None:
        """The run's claim on its session: taken again, or first taken now by a run that
        was queued behind another. None when the run ended instead."""
        run, history, now = self.run, self.runs._history, self.runs._clock()
        with store_errors_as_api_errors():
            if run.claim_token is not None:
                try:
                    claim = history.reclaim(run.session_id, run.claim_token, now, run.owner)
                except ClaimLost:
                    self._fail(errors.deadline_exceeded())
                    return None
            else:
                until = run.deadline + dt.timedelta(seconds=CLAIM_SLACK_SECONDS)
                try:
                    claim = history.claim(run.session_id, now, until, run.owner)
                except SessionBusy:
                    # A foreground turn holds it: give the lease back, come back later.
                    self.store.take(run.run_id, run.step, self.token, now, now)
                    raise run_busy(QUEUED_RETRY_SECONDS) from None
                # Recorded with the first step's checkpoint.
                self.fresh_claim = claim
        if run.request.get("new_session") is not None:
            claim = replace(claim, new_session=bool(run.request["new_session"]))
        return claim

    def _steps(self, stepped: SteppedTurn) -> None:
        usage: dict[str, Any] | None = None
        while True:
            try:
                step = stepped.step(self.hard_deadline)
            except errors.ApiError as error:
                return self._failed(error, stepped=stepped)
            usage = dict(step.usage)
            fresh, self.fresh_claim = self.fresh_claim, None
            try:
                with store_errors_as_api_errors():
                    self.run = self.store.checkpoint(
                        self.run.run_id,
                        self.token,
                        self.runs._clock(),
                        step=self.run.step + 1,
                        state=step.progress.encode(),
                        usage=usage,
                        events=coalesce(step.events),
                        claim_token=fresh.token if fresh else None,
                        generation=fresh.generation if fresh else None,
                    )
            except LeaseLost:
                log.warning("run %s: lease lost; another worker goes on", self.run.run_id)
                return
            if step.done:
                return self._finish(stepped)
            if self.run.cancel is not None:
                return self._end_cancelled(stepped, None, usage)
            if time.monotonic() >= self.slice_ends:
                with store_errors_as_api_errors():
                    self.runs._enqueue_next(self.run)
                self._let_go()
                return

    def _let_go(self) -> None:
        """Best effort: end the slice's lease now, so the next task need not wait for it
        to lapse (after the enqueue: a slice that dies between the two leaves a lease
        that lapses, never a run without a task)."""
        now = self.runs._clock()
        try:
            self.store.take(self.run.run_id, self.run.step, self.token, now, now)
        except Exception:
            log.info("run %s: lease left to lapse", self.run.run_id)

    def _finish(self, stepped: SteppedTurn) -> None:
        try:
            outcome = stepped.finish()
        except errors.ApiError as error:
            return self._failed(error, stepped=None)  # the runner released the claim
        body = self.render(outcome)
        if outcome.pending_approvals:
            pending = {
                "pause_id": outcome.pause_id,
                "pending_approvals": list(outcome.pending_approvals),
            }
            events = [NewEvent(type="approval_required", data=pending)]
            self._end("approval_required", events, usage=outcome.usage, pending=pending)
            return
        events = [NewEvent(type="done", data=body)]
        self._end("completed", events, usage=outcome.usage, response=body)

    def _end_cancelled(
        self, stepped: SteppedTurn | None, claim: Claim | None, usage: dict[str, Any] | None = None
    ) -> None:
        action = self.run.cancel
        try:
            if stepped is not None and action == "interrupt":
                stepped.interrupt(usage)
            elif stepped is not None:
                stepped.release()
            elif claim is not None:
                self.runs._history.release(claim)
        except errors.ApiError as error:
            if error.code in RETRYABLE:
                raise
            log.warning("run %s: cancel could not commit (%s)", self.run.run_id, error.code)
        self._end("cancelled", [], usage=usage)

    def _failed(
        self,
        error: errors.ApiError,
        *,
        stepped: SteppedTurn | None = None,
        claim: Claim | None = None,
    ) -> None:
        if error.code in RETRYABLE:
            raise error  # the queue delivers the task again; the claim is kept
        if stepped is not None:
            stepped.release()
        if claim is not None:
            self.runs._history.release(claim)
        self._fail(error)

    def _fail(self, error: errors.ApiError) -> None:
        detail: dict[str, Any] = {"code": error.code, "message": error.message} | error.details
        events = [NewEvent(type="error", data={"error": detail})]
        self._end("failed", events, error=detail)

    def _end(
        self,
        status: RunStatus,
        events: Sequence[NewEvent],
        *,
        usage: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        pending: dict[str, Any] | None = None,
    ) -> None:
        try:
            with store_errors_as_api_errors():
                run, following = self.store.end(
                    self.run.run_id,
                    self.token,
                    self.runs._clock(),
                    status=status,
                    events=[*events, status_event(status)],
                    usage=usage,
                    response=response,
                    error=error,
                    pending=pending,
                )
        except LeaseLost:
            log.warning("run %s: lease lost before it ended", self.run.run_id)
            return
        log.info("run %s %s", run.run_id, status, extra={"fields": {"run_id": run.run_id}})
        self.runs._notify(run)
        if following is not None:
            with store_errors_as_api_errors():
                self.runs._enqueue_next(following)


def _asking(run: Run, new_session: bool) -> Run:
    """``run`` noting whether its session is new: its response says so, as a
    foreground turn's does."""
    return replace(run, request=run.request | {"new_session": new_session})


def run_not_found() -> errors.ApiError:
    return errors.ApiError(404, "run_not_found", "No such run.")


def run_finished() -> errors.ApiError:
    return errors.ApiError(409, "run_finished", "The run has ended: it cannot be cancelled.")


def run_busy(retry_after: int) -> errors.ApiError:
    return errors.ApiError(
        503,
        "run_busy",
        "Another worker holds the run; the task is retried.",
        {"Retry-After": str(max(1, retry_after))},
    )
