"""Running one turn: claim the session, run the agent, commit, all within a deadline.

The deadline is the request's start plus ``FUNCTION_TIMEOUT_SECONDS`` minus
``DEADLINE_MARGIN_SECONDS``. The agent run gets what is left of it after keeping back
time for the final commit; when it runs out the run is cancelled, the claim is
released and the caller gets 504 with the history untouched. The platform's own
timeout, which kills the instance's request mid-write, is never what stops a turn.
Each model call inside the run is bounded by the same deadline (``deadline.py``).

A turn runs whole (``run``) or streamed (``stream``); both claim, deliver, commit and
fail the same way, and a streamed turn whose reader goes away commits nothing.

The final commit, and finding out its outcome should its reply be lost, are bounded
by the time left before the deadline, not by ``FIRESTORE_TIMEOUT_SECONDS`` alone: a
turn answers before the platform gives up on it. Its outcome decides the answer
(``agent/store/history.py`` has how it is found out): stored, even if the reply was
lost, is the 200 the caller earned; not stored is 503 or 504 and the result file the
turn uploaded is deleted; unknown (Firestore could not be asked in time) is 503 and the
file stays, where the session's clean-up and the bucket's lifecycle rule find it.
A turn that takes over an expired id first sweeps the previous life's result objects.

A turn's run may pause on tool calls that need approval; its commit then stores the
paused run with the session, and a later request with the decisions resumes it as a
turn of its own, with the same claim, deadline and commit (``approvals.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import openai
from agents import (
    Agent,
    ItemHelpers,
    MaxTurnsExceeded,
    ModelBehaviorError,
    RunConfig,
    Runner,
    RunState,
    Usage,
)
from agents.exceptions import ModelTimeoutError
from agents.result import RunResult, RunResultStreaming

from agent.base import errors, tracing
from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.results.policy import Delivery, OffloadPolicy, shrink_answer
from agent.runtime.deadline import within
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.metering import ReservationSpent
from agent.runtime.outputs import guardrail_of, structured_output
from agent.runtime.pricing import DEFAULT_PRICES, Price, usage_cost_usd
from agent.runtime.run_context import RunContext
from agent.runtime.sdk_traces import run_tracing
from agent.runtime.streaming import RunEvent, StreamedRun
from agent.runtime.tools import guarded_run
from agent.runtime.vertex_tokens import TokenRefreshFailed
from agent.store.backend import HistoryBackend, ToolRunBackend
from agent.store.history import (
    Claim,
    ClaimLost,
    CommitUnknown,
    TurnTooLarge,
    UsageTotals,
)
from agent.store.paused_runs import Decision, PausedRun
from agent.store.session import FirestoreSession
from agent.turn import approvals, metering
from agent.turn.approvals import Resume, StoreGuard
from agent.turn.budget import Budget, seconds_to_next_day
from agent.turn.context_window import ContextKeeper, Window
from agent.turn.outcome import TurnOutcome
from agent.turn.outcome import Usage as UsageBody
from agent.turn.store_errors import api_error_of, store_errors_as_api_errors

log = logging.getLogger(__name__)

RunResultBase = RunResult | RunResultStreaming


class TurnRunner:
    """Runs turns: claim, run the agent within the deadline, deliver, commit.

    One per process; thread-safe. ``results`` is the offload policy (none: every
    answer inline)."""

    def __init__(
        self,
        agent: Agent[Any],
        store: HistoryBackend,
        loop: BackgroundLoop,
        settings: Settings,
        results: OffloadPolicy | None = None,
        prices: Mapping[str, Price] = DEFAULT_PRICES,
        context: ContextKeeper | None = None,
        *,
        budget: Budget | None = None,
        tool_runs: ToolRunBackend | None = None,
    ) -> None:
        """``context`` keeps every model call inside the context budget (None: the
        whole history is sent, as in library use); ``budget`` refuses a principal's
        turns past its daily spend and charges every model call a turn makes, whatever its
        outcome (None: no budget);
        ``tool_runs`` guards approved calls (None: unguarded, for library use)."""
        self._context = context
        self._charging = metering.Charging(
            budget, prices, wait_seconds=settings.model_timeout_seconds
        )
        self._tool_runs = tool_runs
        self._fingerprint = approvals.fingerprint(agent, settings.agent_model)
        self._agent = agent
        self._prices = prices
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
        message: str | Resume,
        started: float,
        *,
        owner: str | None,
        on_commit: OnCommit | None = None,
        request_id: str | None = None,
    ) -> TurnOutcome:
        """``message``: the user's, or the decisions that resume a paused run.
        ``started`` is the request's ``time.monotonic()`` at arrival; ``owner`` the
        caller's principal, required so that no route can forget it (None, for library
        use only, skips ownership checks); ``on_commit`` adds writes to the turn's
        commit (the idempotency record); ``request_id`` is the tools' run context's."""
        # Every model call of the turn is charged, whatever its outcome (metering.py).
        charge = self._admit(owner)
        try:
            with metering.metered(charge):
                return self._run(session_id, message, started, owner, on_commit, request_id)
        finally:
            metering.finish(charge)

    def _run(
        self,
        session_id: str,
        message: str | Resume,
        started: float,
        owner: str | None,
        on_commit: OnCommit | None,
        request_id: str | None,
    ) -> TurnOutcome:
        turn = self._open(session_id, message, started, owner, request_id)
        try:
            try:
                result = self._run_once(turn)
            except openai.BadRequestError as exc:
                if not _is_overflow(exc) or turn.window is None or turn.resume is not None:
                    raise
                # The budget was set above what the provider takes: fold harder, once.
                log.warning("context overflow at the provider; compacting harder")
                assert isinstance(message, str)
                turn = self._refit(turn, message)
                result = self._run_once(turn)
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        return self._finish(turn, result, on_commit)

    def _admit(self, owner: str | None) -> metering.TurnCharge | None:
        # Before the claim: a refused turn writes nothing but its released hold.
        with tracing.span("budget_check"):
            return self._charging.start(owner)

    def _run_once(self, turn: _OpenTurn) -> RunResultBase:
        run = Runner.run(
            self._agent,
            turn.input,
            session=turn.session,
            max_turns=self._settings.agent_max_turns,
            run_config=self._run_config(turn),
            # Also for a resumed run: the context is the resuming request's, never stored.
            context=turn.context,
        )
        return self._loop.run(
            within(turn.run_deadline, guarded_run(self._guard(turn), run)),
            timeout=turn.run_deadline - time.monotonic(),
        )

    def _guard(self, turn: _OpenTurn) -> StoreGuard | None:
        if self._tool_runs is None:
            return None
        claim = turn.claim
        return StoreGuard(
            self._tool_runs, claim.session_id, claim.generation, claim.paused, claim.until
        )

    def _run_config(self, turn: _OpenTurn) -> RunConfig:
        traced = run_tracing(self._settings, self._agent.name, turn.session.session_id)
        if self._context is None or turn.window is None:
            return RunConfig(**traced)
        return RunConfig(call_model_input_filter=self._context.input_filter(turn.window), **traced)

    def _refit(self, turn: _OpenTurn, message: str) -> _OpenTurn:
        assert self._context is not None
        turn.session.reset_turn_items()
        # Half of what was refused, and at most half the budget: the budget may be set
        # far above the model's real window.
        refused = (turn.window.estimated if turn.window else 0) * turn.claim.token_ratio
        room = min(0.5, 0.5 * refused / self._context.budget)
        window = self._context.prepare(
            turn.session, turn.claim, message, self._loop, turn.run_deadline, room=room
        )
        return dataclasses.replace(turn, window=_merged(turn.window, window), input=message)

    def stream(
        self,
        session_id: str,
        message: str | Resume,
        started: float,
        idle_seconds: float,
        *,
        owner: str | None,
        on_commit: OnCommit | None = None,
        request_id: str | None = None,
    ) -> Generator[RunEvent | TurnOutcome | None, None, None]:
        """Like ``run``, streamed: claims the session now (raising ApiError as ``run``
        does), then returns an iterator of the run's events, ``None`` after each
        ``idle_seconds`` of silence, and last the ``TurnOutcome``. Failures after the
        claim are raised from the iterator as ApiError. Closing the iterator early
        cancels the run and commits nothing (its model calls are still charged)."""
        charge = self._admit(owner)
        try:
            with metering.metered(charge):  # the run's task copies it now
                turn, run = self._start_stream(session_id, message, started, owner, request_id)
        except BaseException:
            metering.finish(charge)
            raise
        events = self._streamed(turn, run, idle_seconds, on_commit, charge)
        # Started now, so that closing it, or its garbage collection if it is never
        # read, runs the cleanup below and releases the claim.
        next(events)
        return events

    def _start_stream(
        self,
        session_id: str,
        message: str | Resume,
        started: float,
        owner: str | None,
        request_id: str | None,
    ) -> tuple[_OpenTurn, StreamedRun]:
        turn = self._open(session_id, message, started, owner, request_id)
        try:
            run = StreamedRun(
                self._loop,
                self._agent,
                turn.input,
                turn.session,
                max_turns=self._settings.agent_max_turns,
                deadline=turn.run_deadline,
                run_config=self._run_config(turn),
                guard=self._guard(turn),
                context=turn.context,
            )
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        return turn, run

    def _streamed(
        self,
        turn: _OpenTurn,
        run: StreamedRun,
        idle_seconds: float,
        on_commit: OnCommit | None,
        charge: metering.TurnCharge | None,
    ) -> Generator[RunEvent | TurnOutcome | None, None, None]:
        try:
            yield from self._streamed_turn(turn, run, idle_seconds, on_commit, charge)
        finally:  # however it ended, its calls are charged (once)
            metering.finish(charge)

    def _streamed_turn(
        self,
        turn: _OpenTurn,
        run: StreamedRun,
        idle_seconds: float,
        on_commit: OnCommit | None,
        charge: metering.TurnCharge | None,
    ) -> Generator[RunEvent | TurnOutcome | None, None, None]:
        try:
            yield None
            if turn.window is not None and turn.window.compacted:
                yield RunEvent("context_compacted", _compaction(turn.window))
            yield from run.events(idle_seconds)
            result = run.result()
        except GeneratorExit:  # the client went away: stop, and write nothing
            run.cancel()
            self._release(turn)
            raise
        except BaseException as exc:
            run.cancel()
            raise self._fail(turn, exc) from exc
        outcome = self._finish(turn, result, on_commit)
        metering.finish(charge)  # before the last events: a reader may stop at them
        if outcome.pending_approvals:  # stored: the client may decide now
            yield RunEvent(
                "approval_required",
                {"pause_id": outcome.pause_id, "pending_approvals": outcome.pending_approvals},
            )
        yield outcome

    def _open(
        self,
        session_id: str,
        message: str | Resume,
        started: float,
        owner: str | None,
        request_id: str | None = None,
    ) -> _OpenTurn:
        deadline = started + self._settings.turn_budget_seconds
        session = FirestoreSession(session_id, self._store, owner=owner)
        claim_until = utc_now() + dt.timedelta(seconds=deadline - time.monotonic())
        resume = message if isinstance(message, Resume) else None
        pause_id = None
        if resume is not None:
            pause = approvals.paused_run(self._store, session_id, owner)
            approvals.check(pause, resume)
            pause_id = resume.pause_id
        with store_errors_as_api_errors(), tracing.span("claim") as span:
            # Reads the history too; a paused session is taken only by its resume.
            claim = session.begin_turn(claim_until, pause_id)
            span.set("agent.new_session", claim.new_session)
            span.set("agent.history_items", len(claim.history))
        if claim.replaced:
            self._sweep_previous_life(claim)
        run_deadline = deadline - self._commit_reserve - self._offload_reserve
        context = RunContext(owner, session_id, request_id)
        turn = _OpenTurn(session, claim, deadline, run_deadline, context)
        if resume is not None:
            return self._open_resume(turn, resume)
        assert isinstance(message, str)
        turn = dataclasses.replace(turn, input=message)
        if self._context is None:
            return turn
        try:
            window = self._context.prepare(session, claim, message, self._loop, run_deadline)
        except BaseException as exc:
            # A failed summary fails the turn like a failed model call; nothing stored.
            raise self._fail(turn, exc) from exc
        return dataclasses.replace(turn, window=window)

    def _open_resume(self, turn: _OpenTurn, resume: Resume) -> _OpenTurn:
        """The paused run's state, decided, as the turn's input; a paused run of another
        agent definition is dropped instead (409 ``approval_stale``)."""
        pause = turn.claim.paused
        assert pause is not None  # the claim named it
        stale = pause.fingerprint != self._fingerprint or not approvals.restorable(pause)
        earlier: approvals.Ran = {}
        if stale or not all(v.approve for v in resume.verdicts):
            try:  # what ran is the truth: no rejection or drop may contradict it
                earlier = approvals.ran(
                    self._tool_runs, turn.session.session_id, turn.claim.generation, pause
                )
                approvals.check_consistent(resume, earlier)
            except BaseException as exc:
                raise self._fail(turn, exc) from exc
        if stale:
            self._drop(turn, pause, earlier)
        if pause.attempts:
            log.warning("resuming a paused run that an earlier attempt began")
        if self._tool_runs is not None:
            claim = turn.claim
            try:
                approvals.keep_guards(
                    self._tool_runs, claim.session_id, claim.generation, pause, claim.until
                )
            except BaseException as exc:
                raise self._fail(turn, exc) from exc
        window = None
        if self._context is not None:
            # The paused turn's window: the summary it committed covers what it folded.
            summary = turn.claim.summary.text if turn.claim.summary else None
            window = Window(summary, pause.folded, 0, compacted=False)
        try:
            restored = self._loop.run(
                approvals.restore(self._agent, pause, resume, turn.context),
                timeout=turn.run_deadline - time.monotonic(),
            )
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        return dataclasses.replace(
            turn, input=restored.state, window=window, resume=resume, spent=restored.spent
        )

    def _drop(self, turn: _OpenTurn, pause: PausedRun, earlier: approvals.Ran) -> None:
        log.warning("paused run dropped: the agent definition or the SDK changed")
        try:
            turn.session.rewrite_turn(lambda _: approvals.dropped(pause, earlier))
            with tracing.span("commit"):
                turn.session.commit_turn(time_left=turn.deadline - time.monotonic())
        except BaseException as exc:
            raise self._fail(turn, exc) from exc
        raise errors.approval_stale()

    def _finish(
        self, turn: _OpenTurn, result: RunResultBase, on_commit: OnCommit | None
    ) -> TurnOutcome:
        """Deliver the answer (inline, or offloaded) and commit the turn, with the
        paused run when it paused."""
        session, new_session = turn.session, turn.claim.new_session
        usage = self._usage(result, turn.window, turn.spent)
        spent = _totals_of(usage)
        if turn.window and turn.window.estimated and self._context and result.raw_responses:
            reported = result.raw_responses[0].usage.input_tokens
            self._context.calibrate(session, turn.claim, turn.window, reported)
        delivery: Delivery | None = None
        try:
            paused = self._paused(turn, result)
            answer = result.final_output
            if paused is not None:  # what the model wrote before the calls, if anything
                answer = ItemHelpers.text_message_outputs(result.new_items)
            delivery = self._results.deliver(
                session.session_id,
                answer,
                turn.deadline - self._commit_reserve - time.monotonic(),
                turn.claim.generation,
            )
            # Structured output: the validated value, as the JSON the reply holds (inline
            # only; an offloaded answer is the result's file).
            output = None
            if paused is None and delivery.result is None and structured_output(result.last_agent):
                output = delivery.reply
            if delivery.history_text is not None:
                kept = delivery.history_text
                session.rewrite_turn(lambda items: shrink_answer(items, kept))
            extra = None
            if on_commit is not None:

                def extra(batch: Any, expire_at: dt.datetime) -> None:
                    # Joins the turn's commit: it lands if and only if the turn does.
                    assert delivery is not None and on_commit is not None
                    outcome = _outcome(
                        session.session_id, usage, new_session, expire_at, delivery, paused, output
                    )
                    on_commit(batch, outcome, turn.claim.generation)

            decisions: tuple[Decision, ...] = ()
            if turn.resume is not None and turn.claim.paused is not None:
                decisions = tuple(approvals.decision_log(turn.resume, turn.claim.paused))
            with tracing.span("commit"):
                history = session.commit_turn(
                    extra_writes=extra,
                    time_left=turn.deadline - time.monotonic(),
                    paused=paused,
                    decisions=decisions,
                    totals=turn.claim.totals.plus(spent),
                )
        except BaseException as exc:
            error = self._fail(turn, exc)
            # Deleted only when the turn is known not to be stored: a stored turn never
            # points at a missing file. Unknown: it stays for the sweep and the lifecycle.
            if delivery is not None and delivery.object_name and not isinstance(exc, CommitUnknown):
                self._results.discard(delivery.object_name)
            raise error from exc
        return _outcome(
            session.session_id, usage, new_session, history.expire_at, delivery, paused, output
        )

    def _paused(self, turn: _OpenTurn, result: RunResultBase) -> PausedRun | None:
        """The paused run to store, when the run stopped for approval."""
        if not result.interruptions:
            return None
        runs, claim = self._tool_runs, turn.claim

        def used(ids: set[str]) -> set[str]:
            return runs.used(claim.session_id, claim.generation, ids) if runs else set()

        pending = approvals.paused_calls(
            self._agent,
            result.interruptions,
            result.raw_responses,
            turn.claim.history,
            turn.claim.approvals,
            used,
        )
        state = json.dumps(approvals.state_json(result.to_state()))
        return PausedRun(
            pause_id=secrets.token_urlsafe(12),
            pending=pending,
            fingerprint=self._fingerprint,
            paused_at=utc_now(),
            state=PausedRun.compress(state),
            folded=turn.window.keep_from if turn.window else 0,
        )

    def _usage(
        self, result: RunResultBase, window: Window | None, spent_before: Usage | None
    ) -> UsageBody:
        """The turn's usage summed over its model calls, and what it cost; with
        ``summary`` what summarising the history spent, when it did. A resumed run's
        usage less ``spent_before``: the turn that paused it reported that part."""
        usage = result.context_wrapper.usage
        before = spent_before or Usage()
        requests = usage.requests - before.requests
        input_tokens = usage.input_tokens - before.input_tokens
        output_tokens = usage.output_tokens - before.output_tokens
        total_tokens = usage.total_tokens - before.total_tokens
        cached = max(
            0,
            (usage.input_tokens_details.cached_tokens or 0)
            - (before.input_tokens_details.cached_tokens or 0),
        )
        summary: dict[str, Any] = {}
        if window is not None and window.summary_usage is not None:
            spent = window.summary_usage
            summary_cached = spent.input_tokens_details.cached_tokens or 0
            summary = {
                "summary": {
                    "requests": spent.requests,
                    "input_tokens": spent.input_tokens,
                    "cached_input_tokens": summary_cached,
                    "output_tokens": spent.output_tokens,
                    "cost_usd": usage_cost_usd(
                        self._prices,
                        self._settings.context_summary_model or self._settings.agent_model,
                        spent,
                    ),
                }
            }
        return summary | {
            "requests": requests,
            "input_tokens": input_tokens,
            "cached_input_tokens": cached,
            "output_tokens": output_tokens,
            "total_tokens": total_tokens,
            "cost_usd": usage_cost_usd(self._prices, self._settings.agent_model, usage, before),
        }

    def _fail(self, turn: _OpenTurn, exc: BaseException) -> BaseException:
        """Release the claim (the history stays as it was); the error for the caller."""
        self._release(turn)
        return _as_api_error(exc)

    def _sweep_previous_life(self, claim: Claim) -> None:
        """Best effort: delete the result objects of the dead life this claim replaced,
        so nobody who takes an expired id over reaches them (they could not re-sign
        them anyway: another generation), and they do not wait for the lifecycle rule."""
        try:
            self._results.sweep(claim.session_id, lambda: claim.generation)
        except errors.ApiError:
            log.warning("result objects of an expired session left for the lifecycle rule")

    @staticmethod
    def _release(turn: _OpenTurn) -> None:
        if turn.session.has_open_turn:
            turn.session.abort_turn()


OnCommit = Callable[[Any, TurnOutcome, str], None]
"""``on_commit(batch, outcome, generation)``: writes added to the turn's commit."""


@dataclass(frozen=True)
class _OpenTurn:
    session: FirestoreSession
    claim: Claim
    deadline: float
    """``time.monotonic()`` by which the turn must have answered."""
    run_deadline: float
    """By which the agent run must end, leaving time to deliver and commit."""
    context: RunContext
    """What the run's tools get as ``RunContextWrapper.context``; never stored."""
    window: Window | None = None
    """What the model calls are sent of the history (None: all of it)."""
    input: str | RunState[Any, Any] = ""
    """What the run starts from: the user's message, or a paused run's decided state."""
    resume: Resume | None = None
    spent: Usage | None = None
    """A resumed run's usage when it paused (already reported)."""


def _totals_of(usage: UsageBody) -> UsageTotals:
    """What a turn adds to its session's totals: its model calls and the summariser's.
    A cost that is unknown (a model without a price) adds nothing."""
    spent = UsageTotals()
    for part in (usage, usage.get("summary")):
        if part is None:
            continue
        spent = spent.plus(
            UsageTotals(
                part["requests"],
                part["input_tokens"],
                part.get("cached_input_tokens", 0),
                part["output_tokens"],
                part.get("cost_usd") or 0.0,
            )
        )
    return spent


def _is_overflow(exc: openai.BadRequestError) -> bool:
    return getattr(exc, "code", None) == "context_length_exceeded"


def _merged(first: Window | None, second: Window) -> Window:
    """The refit window, still counting the first fold's summary call."""
    if first is None or first.summary_usage is None or second.summary_usage is None:
        return second if first is None or second.compacted else first
    spent = Usage()
    spent.add(first.summary_usage)
    spent.add(second.summary_usage)
    return dataclasses.replace(second, compacted=True, summary_usage=spent)


def _compaction(window: Window) -> dict[str, Any]:
    return {"folded_items": window.keep_from, "summary_chars": len(window.summary or "")}


def _outcome(
    session_id: str,
    usage: UsageBody,
    new_session: bool,
    expire_at: dt.datetime,
    delivery: Delivery,
    paused: PausedRun | None = None,
    output: str | None = None,
) -> TurnOutcome:
    return TurnOutcome(
        session_id=session_id,
        reply=delivery.reply,
        new_session=new_session,
        usage=usage,
        expire_at=expire_at,
        result=delivery.result,
        warnings=delivery.warnings,
        pending_approvals=tuple(c.as_json() for c in paused.pending) if paused else (),
        pause_id=paused.pause_id if paused else None,
        output_json=output,
    )


def _as_api_error(exc: BaseException) -> BaseException:
    """Failures with a documented status become ApiError; anything else is a bug."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, TimeoutError | ClaimLost | ModelTimeoutError | openai.APITimeoutError):
        return errors.deadline_exceeded()
    if isinstance(exc, ReservationSpent):
        # The turn was charged its whole reservation (budget.py): no further call.
        return errors.budget_exceeded(seconds_to_next_day(utc_now()))
    if isinstance(exc, MaxTurnsExceeded):
        return errors.max_turns_exceeded()
    tripped = guardrail_of(exc)
    if tripped is not None:
        log.info("guardrail tripped: %s (%s)", *tripped)
        return errors.guardrail_tripped(*tripped)
    if isinstance(exc, openai.BadRequestError) and _is_overflow(exc):
        log.warning("context overflow at the provider after compacting")
        return errors.context_overflow()
    if isinstance(exc, openai.RateLimitError):
        log.warning("model call refused: over quota or rate limit")
        return errors.model_overloaded()
    if isinstance(exc, openai.APIError | ModelBehaviorError | TurnTooLarge | TokenRefreshFailed):
        log.warning("model call failed: %s", type(exc).__name__)
        return errors.model_error()
    return api_error_of(exc) or exc
