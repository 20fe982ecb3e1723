"""Human approval of tool calls that act: pausing a run, deciding, resuming anywhere.

A tool that needs approval (``agent/runtime/tools.py``) makes the SDK stop the run
before calling it. The turn then commits, with the items so far, a ``PausedRun``: the
pending calls and the SDK's serialised run state, kept with the session on the server
(``agent/store/paused_runs.py``); the caller sees only the pending calls. Until they
are decided the session takes no other turn (409 ``approval_pending``).

A decision request (``POST /sessions/<id>/approvals``) must decide every pending call,
each once (400 otherwise; 409 ``approval_not_pending`` for a call that is not pending).
It claims the session naming the paused run, so of two concurrent ones exactly one
proceeds; restores the state on whichever instance got the request; approves or
rejects each call (a rejection reaches the model as the tool's result); and runs on,
as a turn: the resumed run's items, the decisions and the cleared (or next) pause land
in one commit, or nothing does and the decision can be sent again.

At most once per call id: an approved call goes through ``StoreGuard``, which records
it in the store before it runs (``agent/store/tool_runs.py``). A resume that finds the
record of an earlier attempt does not run the call again; it gives the model the
recorded output, or, when the earlier attempt died mid-call, says the outcome is
unknown.

A paused run remembers a fingerprint of the agent definition (instructions, model,
tools). If the deployed agent differs at resume, the run's state may not fit it: the
pause is dropped (the calls get a "not run" result and the history a note) and the
caller gets 409 ``approval_stale``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, RunState, ToolApprovalItem, Usage
from agents.usage import deserialize_usage

from agent.base import errors
from agent.base.clock import utc_now
from agent.store.backend import HistoryBackend, ToolRunBackend
from agent.store.history import Item
from agent.store.paused_runs import Decision, PausedRun, PendingCall
from agent.turn.store_errors import store_errors_as_api_errors

UNKNOWN_OUTCOME = (
    "error: an earlier attempt to run this approved call was interrupted; it may or may"
    " not have taken effect, and it was not run again."
)
STALE_OUTPUT = "error: not run: the agent changed before this call was approved."
STALE_NOTE = "[The paused action was dropped: the agent was updated before it was approved.]"
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Verdict:
    """One decision of a request."""

    call_id: str
    approve: bool
    reason: str | None = None


@dataclass(frozen=True)
class Resume:
    """What a decision request asks: continue the session's paused run with ``verdicts``."""

    verdicts: tuple[Verdict, ...]
    by: str
    """The principal deciding."""

    def fingerprint(self) -> dict[str, object]:
        """What makes two decision requests the same request (for Idempotency-Key)."""
        return {"decisions": [[v.call_id, v.approve, v.reason] for v in self.verdicts]}


def paused_run(store: HistoryBackend, session_id: str, owner: str | None) -> PausedRun:
    """The paused run of the caller's live session (without its state): 404
    ``session_not_found`` when there is no such session, 409 ``approval_not_pending``
    when it waits for nothing. One read; a second only on the way to a 404."""
    with store_errors_as_api_errors():
        pause = store.paused_run(session_id, utc_now(), owner)
        if pause is None and (owner is None or store.owner_of(session_id, utc_now()) != owner):
            raise errors.session_not_found()
    if pause is None:
        raise errors.approval_not_pending()
    return pause


def fingerprint(agent: Agent[Any], model: str) -> str:
    """SHA-256 of what a paused run's state depends on: instructions, model, tools."""
    tools = [
        {
            "name": getattr(tool, "name", ""),
            "description": getattr(tool, "description", ""),
            "parameters": getattr(tool, "params_json_schema", None),
            "needs_approval": bool(getattr(tool, "needs_approval", False)),
        }
        for tool in agent.tools
    ]
    canonical = json.dumps(
        {
            "name": agent.name,
            "instructions": str(agent.instructions),
            "model": model,
            "tools": tools,
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check(pause: PausedRun, verdicts: Sequence[Verdict]) -> None:
    """Raises ApiError unless ``verdicts`` decide every call of ``pause``, each once."""
    ids = [v.call_id for v in verdicts]
    if len(set(ids)) != len(ids):
        raise errors.bad_request("decisions_invalid", "Each call_id may be decided once.")
    pending = {call.call_id for call in pause.pending}
    if not set(ids) <= pending:
        raise errors.approval_not_pending()
    if set(ids) != pending:
        raise errors.ApiError(
            400,
            "decisions_incomplete",
            "Decide every pending call in one request.",
            details={"pending_call_ids": sorted(pending - set(ids))},
        )


def pending_of(interruptions: Sequence[ToolApprovalItem]) -> tuple[PendingCall, ...]:
    return tuple(
        PendingCall(
            str(_field(item.raw_item, "call_id") or ""),
            str(item.tool_name or _field(item.raw_item, "name") or ""),
            str(_field(item.raw_item, "arguments") or ""),
        )
        for item in interruptions
    )


@dataclass(frozen=True)
class Restored:
    state: RunState[Any, Any]
    """The paused run, every decision applied."""
    spent: Usage
    """What the run had used when it paused: reported by the turn that paused, so the
    resumed turn reports only what it adds."""


async def restore(agent: Agent[Any], pause: PausedRun, resume: Resume) -> Restored:
    """The paused run's state with every decision applied."""
    data = json.loads(pause.state_json())
    state: RunState[Any, Any] = await RunState.from_json(agent, data)
    verdicts = {v.call_id: v for v in resume.verdicts}
    for item in state.get_interruptions():
        verdict = verdicts[str(_field(item.raw_item, "call_id"))]
        if verdict.approve:
            state.approve(item)
        else:
            state.reject(item, rejection_message=rejection(verdict))
    return Restored(state, deserialize_usage((data.get("context") or {}).get("usage") or {}))


def rejection(verdict: Verdict) -> str:
    """What the model gets as the result of a rejected call."""
    why = f": {verdict.reason}" if verdict.reason else ""
    return f"rejected by the user{why}. The action was not performed."


def decision_log(resume: Resume, pause: PausedRun) -> list[Decision]:
    at = utc_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    tools = {call.call_id: call.tool for call in pause.pending}
    return [
        {
            "call_id": v.call_id,
            "tool": tools.get(v.call_id, ""),
            "approved": v.approve,
            "reason": v.reason,
            "by": resume.by,
            "at": at,
        }
        for v in resume.verdicts
    ]


def dropped(pause: PausedRun) -> list[Item]:
    """What a dropped pause leaves in the history: each call answered "not run" (the
    model's next request must answer every call it made), and a note."""
    outputs: list[Item] = [
        {"type": "function_call_output", "call_id": call.call_id, "output": STALE_OUTPUT}
        for call in pause.pending
    ]
    note: Item = {"role": "assistant", "content": STALE_NOTE}
    return [*outputs, note]


class StoreGuard:
    """The ``CallGuard`` of one turn: records each approved call before it runs."""

    def __init__(
        self,
        store: ToolRunBackend,
        session_id: str,
        generation: str,
        until: dt.datetime | None = None,
    ) -> None:
        """``until``: the end of the turn's claim; each record lasts at least that long."""
        self._store = store
        self._session_id = session_id
        self._generation = generation
        self._until = until

    async def run(self, call_id: str, tool: str, invoke: Callable[[], Awaitable[Any]]) -> Any:
        now = utc_now()
        earlier = await asyncio.to_thread(
            self._store.start, self._session_id, self._generation, call_id, now, self._until
        )
        if earlier is not None:
            return earlier.output if earlier.output is not None else UNKNOWN_OUTCOME
        output = await invoke()
        text = output if isinstance(output, str) else json.dumps(output, default=str)
        await asyncio.to_thread(
            self._store.finish, self._session_id, self._generation, call_id, text
        )
        return output


def keep_guards(
    store: ToolRunBackend, session_id: str, generation: str, pause: PausedRun, until: dt.datetime
) -> None:
    """Each claim of a paused run makes the guards of its calls last as long as the claim
    (which keeps the session, and so the pause, alive that long): a guard never expires
    while its pause can still be resumed. 503 when that cannot be written."""
    with store_errors_as_api_errors():
        store.keep(session_id, generation, [call.call_id for call in pause.pending], until)


def _field(raw: Any, name: str) -> Any:
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)
