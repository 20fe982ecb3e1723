"""A turn run in steps, for work longer than a request (background runs, ``agent/runs``).

A step is one SDK turn: one model call and the tool calls it asked for. The run is
streamed and told to stop after its current turn (``cancel(mode="after_turn")``), then
its ``RunState`` is taken (``to_state``): that state, and the items the step added to
the session (the SDK saves only a step's new items when it resumes from a state), are
the turn's ``Progress``, which the caller keeps between steps and hands back to carry
on, in this process or another. The session's history is not written by a step: the
session stays claimed for the whole turn, and the last step ends in the same commit a
foreground turn makes (``TurnRunner``'s finish), so the answer is the same body.

This module reuses the runner's own pieces (its charging, run configuration, usage and
finish) so that a turn run in steps is charged, configured and committed exactly as a
foreground turn; it adds only the stepping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from agents import Runner, RunState
from agents.result import RunResultStreaming

from agent.runtime.deadline import within
from agent.runtime.streaming import RunEvent, translate
from agent.runtime.tools import guarded_run
from agent.store.history import Claim, Item
from agent.store.session import FirestoreSession
from agent.turn import metering
from agent.turn.context_window import Window
from agent.turn.outcome import TurnOutcome
from agent.turn.outcome import Usage as UsageBody
from agent.turn.runner import OnCommit, TurnRunner, _as_api_error, _OpenTurn, _totals_of
from agent.turn.store_errors import store_errors_as_api_errors

CANCELLED_NOTE = "[The run was cancelled here; what it did before is kept above.]"
"""The assistant's closing message of a run cancelled with ``interrupt``."""


@dataclass(frozen=True, kw_only=True)
class Progress:
    """What a turn run in steps has done so far, kept between steps."""

    state: str | None = None
    """The SDK's ``RunState`` JSON after the last step; None before the first."""
    pending: list[Item] = field(default_factory=list)
    """What the steps added to the session; committed by the last step."""
    summary: str | None = None
    keep_from: int = 0
    """The turn's context window (as a paused run keeps it, ``approvals.py``)."""

    def encode(self) -> bytes:
        doc = {
            "state": self.state,
            "pending": self.pending,
            "summary": self.summary,
            "keep_from": self.keep_from,
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)

    @staticmethod
    def decode(data: bytes | None) -> Progress:
        if not data:
            return Progress()
        doc = json.loads(zlib.decompress(data))
        return Progress(
            state=doc["state"],
            pending=list(doc["pending"]),
            summary=doc.get("summary"),
            keep_from=int(doc.get("keep_from") or 0),
        )


@dataclass(frozen=True)
class Step:
    """One step done: its client events (deltas not yet coalesced), the progress to keep,
    the turn's usage so far, and whether the turn can be finished now (it answered, or
    paused for approval)."""

    events: list[RunEvent]
    progress: Progress
    usage: UsageBody
    done: bool


class SteppedTurn:
    """One slice's hold on a turn run in steps: ``step`` until ``done``, then
    ``finish``; or ``interrupt`` / ``release`` to stop. Not thread-safe."""

    def __init__(
        self,
        runner: TurnRunner,
        turn: _OpenTurn,
        progress: Progress,
        charge: metering.TurnCharge | None,
    ) -> None:
        self._runner = runner
        self._turn = turn
        self._progress = progress
        self._charge = charge
        self._result: RunResultStreaming | None = None

    @property
    def claim(self) -> Claim:
        return self._turn.claim

    def step(self, deadline: float) -> Step:
        """Run one SDK turn, bounded by ``deadline`` (``time.monotonic()``); raises
        ApiError as a foreground turn fails (the claim is kept: the caller decides)."""
        runner, turn = self._runner, self._turn
        run_input: str | RunState[Any, Any] = turn.input
        if self._progress.state is not None:
            data = json.loads(self._progress.state)
            run_input = runner._loop.run(
                RunState.from_json(runner._agent, data), timeout=deadline - time.monotonic()
            )
        events: list[RunEvent] = []
        try:
            with metering.metered(self._charge):  # the step's task copies it now
                result = runner._loop.run(
                    within(
                        deadline, guarded_run(runner._guard(turn), self._one(run_input, events))
                    ),
                    timeout=max(0.0, deadline - time.monotonic()) + 1,
                )
        except BaseException as exc:
            raise _as_api_error(exc) from exc
        self._result = result
        pending = list(turn.session.pending_items())
        state = json.dumps(result.to_state().to_json())
        self._progress = dataclasses.replace(self._progress, state=state, pending=pending)
        # Stopped after a tool turn, the SDK has no final output yet.
        done = bool(result.interruptions) or result.final_output is not None
        usage = runner._usage(result, turn.window, None)
        return Step(events, self._progress, usage, done)

    async def _one(
        self, run_input: str | RunState[Any, Any], events: list[RunEvent]
    ) -> RunResultStreaming:
        runner, turn = self._runner, self._turn
        result = Runner.run_streamed(
            runner._agent,
            run_input,
            session=turn.session,
            max_turns=runner._settings.agent_max_turns,
            run_config=runner._run_config(turn),
        )
        try:
            async for event in result.stream_events():
                # Asked once the turn has begun: asked before, the SDK starts no turn.
                result.cancel(mode="after_turn")
                translated = translate(event)
                if translated is not None:
                    events.append(translated)
        except asyncio.CancelledError:
            result.cancel()
            raise
        if result.run_loop_exception is not None:
            raise result.run_loop_exception
        return result

    def finish(self, on_commit: OnCommit | None = None) -> TurnOutcome:
        """The final commit, as a foreground turn makes it (the answer delivered, the
        turn's items and usage written, or the paused run stored)."""
        if self._result is None:
            raise RuntimeError("finish follows a step that was done")
        return self._runner._finish(self._turn, self._result, on_commit)

    def interrupt(self, usage: dict[str, Any] | None) -> None:
        """Commit what the steps did so far and a note that the run was cancelled."""
        turn = self._turn
        note: Item = {
            "id": f"msg_cancelled_{secrets.token_hex(8)}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": CANCELLED_NOTE, "annotations": []}],
        }
        turn.session.rewrite_turn(lambda items: [*items, note])
        spent = _totals_of(usage) if usage else None
        totals = turn.claim.totals.plus(spent) if spent else turn.claim.totals
        try:
            turn.session.commit_turn(time_left=turn.deadline - time.monotonic(), totals=totals)
        except BaseException as exc:
            raise _as_api_error(exc) from exc

    def release(self) -> None:
        """Stop: release the session's claim; the history stays as it was."""
        if self._turn.session.has_open_turn:
            self._turn.session.abort_turn()

    def close(self) -> None:
        """The slice ended: its model calls are charged (once)."""
        metering.finish(self._charge)


def open_stepped(
    runner: TurnRunner,
    claim: Claim,
    *,
    owner: str | None,
    message: str,
    progress: Progress,
    started: float,
    first: bool,
) -> SteppedTurn:
    """A slice's hold on the turn: the session (claimed already, by ``claim``) with the
    items earlier steps added, the context window, and the slice's charge. ``first``:
    the turn's first step is next (the window is planned now; the summary it may write
    is not kept across slices). Raises ApiError (budget refused)."""
    charge = runner._admit(owner)
    try:
        deadline = started + runner._settings.turn_budget_seconds
        session = FirestoreSession(claim.session_id, runner._store, owner=owner)
        session.adopt_turn(claim, progress.pending)
        run_deadline = deadline - runner._commit_reserve - runner._offload_reserve
        turn = _OpenTurn(session, claim, deadline, run_deadline, input=message)
        if runner._context is not None:
            if first:
                with store_errors_as_api_errors():
                    window = runner._context.prepare(
                        session, claim, message, runner._loop, run_deadline
                    )
                progress = dataclasses.replace(
                    progress, summary=window.summary, keep_from=window.keep_from
                )
            else:
                window = Window(progress.summary, progress.keep_from, 0, compacted=False)
            turn = dataclasses.replace(turn, window=window)
    except BaseException as exc:
        metering.finish(charge)
        raise _as_api_error(exc) from exc
    return SteppedTurn(runner, turn, progress, charge)
