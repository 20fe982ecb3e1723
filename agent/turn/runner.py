"""Running one turn: claim the session, run the agent, commit, all within a deadline.

The deadline is the request's start plus ``FUNCTION_TIMEOUT_SECONDS`` minus
``DEADLINE_MARGIN_SECONDS``. The agent run gets what is left of it after keeping back
time for the final commit; when it runs out the run is cancelled, the claim is
released and the caller gets 504 with the history untouched. The platform's own
timeout, which kills the instance's request mid-write, is never what stops a turn.
Each model call inside the run is bounded by the same deadline (``deadline.py``).

A turn runs whole (``run``) or streamed (``stream``); both claim, deliver, commit and
fail the same way, and a streamed turn whose reader goes away commits nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import openai
from agents import Agent, MaxTurnsExceeded, ModelBehaviorError, Runner
from agents.exceptions import ModelTimeoutError
from agents.result import RunResultBase

from agent.base import errors, tracing
from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.results.policy import Delivery, OffloadPolicy, shrink_answer
from agent.runtime.deadline import within
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.streaming import RunEvent, StreamedRun
from agent.store.history import (
    Claim,
    ClaimLost,
    HistoryStore,
    TurnTooLarge,
)
from agent.store.session import FirestoreSession
from agent.turn.outcome import TurnOutcome
from agent.turn.store_errors import api_error_of, store_errors_as_api_errors

log = logging.getLogger(__name__)


class TurnRunner:
    """Runs turns: claim, run the agent within the deadline, deliver, commit.

    One per process; thread-safe. ``results`` is the offload policy (none: every
    answer inline)."""

    def __init__(
        self,
        agent: Agent[None],
        store: HistoryStore,
        loop: BackgroundLoop,
        settings: Settings,
        results: OffloadPolicy | None = None,
    ) -> None:
        self._agent = agent
        self._store = store
        self._loop = loop
        self._settings = settings
        self._results = results or OffloadPolicy(settings, None)
        # Time kept back for the final commit: it must land before the claim lapses.
        self._commit_reserve = min(
            settings.firestore_timeout_seconds, settings.turn_budget_seconds / 5
        )
        self._offload_reserve = self._results.reserve_seconds

    def run(
        self,
        session_id: str,
        message: str,
        started: float,
        *,
        owner: str | None,
        on_commit: OnCommit | None = None,
    ) -> TurnOutcome:
        """``started`` is the request's ``time.monotonic()`` at arrival; ``owner`` the
        caller's principal, required so that no route can forget it (None, for library
        use only, skips ownership checks); ``on_commit(batch, outcome)`` adds writes to the turn's
        commit (the idempotency record)."""
        turn = self._open(session_id, started, owner)
        try:
            result = self._loop.run(
                within(
                    turn.run_deadline,
                    Runner.run(
                        self._agent,
                        message,
                        session=turn.session,
                        max_turns=self._settings.agent_max_turns,
                    ),
                ),
                timeout=turn.run_deadline - time.monotonic(),
            )
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        return self._finish(turn, result, on_commit)

    def stream(
        self,
        session_id: str,
        message: str,
        started: float,
        idle_seconds: float,
        *,
        owner: str | None,
        on_commit: OnCommit | None = None,
    ) -> Generator[RunEvent | TurnOutcome | None, None, None]:
        """Like ``run``, streamed: claims the session now (raising ApiError as ``run``
        does), then returns an iterator of the run's events, ``None`` after each
        ``idle_seconds`` of silence, and last the ``TurnOutcome``. Failures after the
        claim are raised from the iterator as ApiError. Closing the iterator early
        cancels the run and commits nothing."""
        turn = self._open(session_id, started, owner)
        try:
            run = StreamedRun(
                self._loop,
                self._agent,
                message,
                turn.session,
                max_turns=self._settings.agent_max_turns,
                deadline=turn.run_deadline,
            )
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        events = self._streamed(turn, run, idle_seconds, on_commit)
        # Started now, so that closing it, or its garbage collection if it is never
        # read, runs the cleanup below and releases the claim.
        next(events)
        return events

    def _streamed(
        self, turn: _OpenTurn, run: StreamedRun, idle_seconds: float, on_commit: OnCommit | None
    ) -> Generator[RunEvent | TurnOutcome | None, None, None]:
        try:
            yield None
            yield from run.events(idle_seconds)
            result = run.result()
        except GeneratorExit:  # the client went away: stop, and write nothing
            run.cancel()
            self._release(turn)
            raise
        except BaseException as exc:
            run.cancel()
            raise self._fail(turn, exc) from exc
        yield self._finish(turn, result, on_commit)

    def _open(self, session_id: str, started: float, owner: str | None) -> _OpenTurn:
        deadline = started + self._settings.turn_budget_seconds
        session = FirestoreSession(session_id, self._store, owner=owner)
        claim_until = utc_now() + dt.timedelta(seconds=deadline - time.monotonic())
        with store_errors_as_api_errors(), tracing.span("claim") as span:
            claim = session.begin_turn(claim_until)  # reads the history too
            span.set("agent.new_session", claim.new_session)
            span.set("agent.history_items", len(claim.history))
        run_deadline = deadline - self._commit_reserve - self._offload_reserve
        return _OpenTurn(session, claim, deadline, run_deadline)

    def _finish(
        self, turn: _OpenTurn, result: RunResultBase, on_commit: OnCommit | None
    ) -> TurnOutcome:
        """Deliver the answer (inline, or offloaded) and commit the turn."""
        session, new_session = turn.session, turn.claim.new_session
        delivery: Delivery | None = None
        try:
            delivery = self._results.deliver(
                session.session_id,
                result.final_output,
                turn.deadline - self._commit_reserve - time.monotonic(),
            )
            if delivery.history_text is not None:
                kept = delivery.history_text
                session.rewrite_turn(lambda items: shrink_answer(items, kept))
            extra = None
            if on_commit is not None:
                done = on_commit

                def extra(batch: Any, expire_at: dt.datetime) -> None:
                    assert delivery is not None
                    outcome = _outcome(session.session_id, result, new_session, expire_at, delivery)
                    done(batch, outcome)

            with tracing.span("commit"):
                history = session.commit_turn(extra_writes=extra)
        except BaseException as exc:
            error = self._fail(turn, exc)
            if delivery is not None and delivery.object_name:
                self._results.discard(delivery.object_name)
            raise error from exc
        return _outcome(session.session_id, result, new_session, history.expire_at, delivery)

    def _fail(self, turn: _OpenTurn, exc: BaseException) -> BaseException:
        """Release the claim (the history stays as it was); the error for the caller."""
        self._release(turn)
        return _as_api_error(exc)

    @staticmethod
    def _release(turn: _OpenTurn) -> None:
        if turn.session.has_open_turn:
            turn.session.abort_turn()


OnCommit = Callable[[Any, TurnOutcome], None]


@dataclass(frozen=True)
class _OpenTurn:
    session: FirestoreSession
    claim: Claim
    deadline: float
    """``time.monotonic()`` by which the turn must have answered."""
    run_deadline: float
    """By which the agent run must end, leaving time to deliver and commit."""


def _outcome(
    session_id: str,
    result: RunResultBase,
    new_session: bool,
    expire_at: dt.datetime,
    delivery: Delivery,
) -> TurnOutcome:
    usage = result.context_wrapper.usage
    return TurnOutcome(
        session_id=session_id,
        reply=delivery.reply,
        new_session=new_session,
        usage={
            "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
        },
        expire_at=expire_at,
        result=delivery.result,
        warnings=delivery.warnings,
    )


def _as_api_error(exc: BaseException) -> BaseException:
    """Failures with a documented status become ApiError; anything else is a bug."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, TimeoutError | ClaimLost | ModelTimeoutError | openai.APITimeoutError):
        return errors.deadline_exceeded()
    if isinstance(exc, MaxTurnsExceeded):
        return errors.max_turns_exceeded()
    if isinstance(exc, openai.RateLimitError):
        log.warning("model call refused: over quota or rate limit")
        return errors.model_overloaded()
    if isinstance(exc, openai.APIError | ModelBehaviorError | TurnTooLarge):
        log.warning("model call failed: %s", type(exc).__name__)
        return errors.model_error()
    return api_error_of(exc) or exc
