"""Running one turn: claim the session, run the agent, commit, all within a deadline.

The deadline is the request's start plus ``FUNCTION_TIMEOUT_SECONDS`` minus
``DEADLINE_MARGIN_SECONDS``. The agent run gets what is left of it after keeping back
time for the final commit; when it runs out the run is cancelled, the claim is
released and the caller gets 504 with the history untouched. The platform's own
timeout, which kills the instance's request mid-write, is never what stops a turn.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from agents import Agent, MaxTurnsExceeded, ModelBehaviorError, Runner, RunResult
from agents.exceptions import ModelTimeoutError

from . import errors
from .event_loop import BackgroundLoop
from .firestore_session import FirestoreSession, utc_now
from .history_store import (
    ClaimLost,
    HistoryStore,
    SessionBusy,
    SessionTaken,
    StoreUnavailable,
    TurnTooLarge,
)
from .ownership import session_id_taken
from .results import Delivery, ResultLink, Results
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TurnOutcome:
    session_id: str
    reply: str
    new_session: bool
    usage: dict[str, int]
    expire_at: dt.datetime
    result: ResultLink | None = None
    warnings: tuple[dict[str, str], ...] = ()


class TurnRunner:
    def __init__(
        self,
        agent: Agent[None],
        store: HistoryStore,
        loop: BackgroundLoop,
        settings: Settings,
        results: Results | None = None,
    ) -> None:
        self._agent = agent
        self._store = store
        self._loop = loop
        self._settings = settings
        self._results = results or Results(settings, None)
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
        on_commit: Callable[[Any, TurnOutcome], None] | None = None,
    ) -> TurnOutcome:
        """``started`` is the request's ``time.monotonic()`` at arrival; ``owner`` the
        caller's principal, required so that no route can forget it (None, for library
        use only, skips ownership checks); ``on_commit(batch, outcome)`` adds writes to the turn's
        commit (the idempotency record)."""
        deadline = started + self._settings.turn_budget_seconds
        session = FirestoreSession(session_id, self._store, owner=owner)
        claim_until = utc_now() + dt.timedelta(seconds=deadline - time.monotonic())
        try:
            claim = session.begin_turn(claim_until)
        except SessionBusy as busy:
            raise errors.session_busy(busy.retry_after) from None
        except SessionTaken:
            raise session_id_taken() from None
        except StoreUnavailable:
            raise errors.storage_unavailable() from None
        delivery: Delivery | None = None
        try:
            result = self._loop.run(
                Runner.run(
                    self._agent,
                    message,
                    session=session,
                    max_turns=self._settings.agent_max_turns,
                ),
                timeout=deadline - self._commit_reserve - self._offload_reserve - time.monotonic(),
            )
            delivery = self._results.deliver(
                session, result.final_output, deadline - self._commit_reserve - time.monotonic()
            )
            extra = None
            if on_commit is not None:
                done = on_commit

                def extra(batch: Any, expire_at: dt.datetime) -> None:
                    assert delivery is not None
                    outcome = _outcome(session_id, result, claim.new_session, expire_at, delivery)
                    done(batch, outcome)

            history = session.commit_turn(extra_writes=extra)
        except BaseException as exc:
            if session.has_open_turn:
                session.abort_turn()
            if delivery is not None and delivery.object_name:
                self._results.discard(delivery.object_name)
            raise _as_api_error(exc) from exc
        return _outcome(session_id, result, claim.new_session, history.expire_at, delivery)


def _outcome(
    session_id: str,
    result: RunResult,
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
    if isinstance(exc, openai.APIError | ModelBehaviorError | TurnTooLarge):
        log.warning("model call failed: %s", type(exc).__name__)
        return errors.model_error()
    if isinstance(exc, StoreUnavailable):
        return errors.storage_unavailable()
    return exc
