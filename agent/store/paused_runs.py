"""A run paused for a person's approval, as the store keeps it with its session.

When the agent calls a tool that needs approval the run stops, and the turn's commit
stores, with the items so far, a ``PausedRun``: the calls waiting for a decision and
the SDK's serialised run state (``RunState.to_json``, compressed). It lives on the
session's own record (a field of the Firestore session document, a column of the
SQLite row), so it is written and dropped in the same atomic commit as the history
it continues, expires with the session, and never leaves the server: callers see the
pending calls, never the state.

Bounds, so that the session document (whose history tail is under 512 KiB) stays under
Firestore's 1 MiB with room to spare (``doc_size.py`` has the sum): the compressed state
is at most ``MAX_STATE_BYTES`` and the pending calls (ids, tool names and arguments, kept
uncompressed because callers are shown them) at most ``MAX_PENDING_BYTES``; a pause over
either fails its turn (``StateTooLarge``, 502 ``approval_state_too_large``) and nothing
is stored. The decision log keeps the last ``MAX_DECISIONS`` decisions that fit
``MAX_DECISION_LOG_BYTES``, the newest first: the newest decision is always kept (a
decision's reason is at most 500 characters and its call id is bounded by the pending
calls', so one always fits).

Guarantees the backends keep (checked by the store contract tests):

* While a run is paused, a new turn's claim is refused (``RunPaused``); only a claim
  naming the paused run (``resume=pause_id``) may take the session, and a claim naming
  one that is gone (resumed, dropped, expired) is refused (``PauseChanged``).
* A resuming claim counts itself in ``attempts`` in the claim's own write: a resume
  that finds ``attempts`` above zero knows an earlier one may have begun running tools.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.store.doc_size import value_size
from agent.store.schema import (
    PAUSE_ATTEMPTS,
    PAUSE_FINGERPRINT,
    PAUSE_FOLDED,
    PAUSE_ID,
    PAUSE_PENDING,
    PAUSE_STATE,
    PAUSED_AT,
)

MAX_STATE_BYTES = 192 * 1024
MAX_PENDING_BYTES = 64 * 1024
"""The pending calls as stored (Firestore's size of the list of maps)."""
MAX_DECISIONS = 100
MAX_DECISION_LOG_BYTES = 96 * 1024
"""The decision log as stored (Firestore's size of the list of maps)."""

Decision = dict[str, Any]
"""One recorded decision: call_id, tool, approved, reason, by (principal), at (RFC 3339)."""


class PauseError(Exception):
    """Base of this module's errors."""


class RunPaused(PauseError):
    """The session's run waits for approval of ``pending`` (call ids)."""

    def __init__(self, pending: Sequence[str], pause_id: str = "") -> None:
        super().__init__("the session's run waits for approval")
        self.pending = tuple(pending)
        self.pause_id = pause_id


class PauseChanged(PauseError):
    """The paused run a resume named is no longer the session's."""


class StateTooLarge(PauseError):
    """A paused run's state exceeds MAX_STATE_BYTES compressed, or its pending calls
    MAX_PENDING_BYTES."""


@dataclass(frozen=True)
class PendingCall:
    call_id: str
    tool: str
    arguments: str
    """The arguments as canonical JSON (``agent/turn/approvals.py``): what the person is
    shown and what the approved tool runs with."""

    def as_json(self) -> dict[str, str]:
        return {"call_id": self.call_id, "tool": self.tool, "arguments": self.arguments}


@dataclass(frozen=True)
class PausedRun:
    pause_id: str
    """A random id of this pause: what a resume names."""
    pending: tuple[PendingCall, ...]
    fingerprint: str
    """Of the agent definition that paused (``agent/turn/approvals.py``)."""
    paused_at: dt.datetime
    state: bytes = field(default=b"", repr=False)
    """The compressed run state; empty when read without it (``paused_run``)."""
    attempts: int = 0
    """Resumes that claimed the session before this one."""
    folded: int = 0
    """Leading items of the run's input that the session's summary covers (the paused
    turn folded them): a resume's model calls skip them, as the paused turn's did."""

    @staticmethod
    def compress(state_json: str) -> bytes:
        packed = zlib.compress(state_json.encode("utf-8"), 6)
        if len(packed) > MAX_STATE_BYTES:
            raise StateTooLarge(f"{len(packed)} bytes compressed")
        return packed

    def state_json(self) -> str:
        return zlib.decompress(self.state).decode("utf-8")


def check_claim(paused: PausedRun | None, resume: str | None) -> None:
    """Whether a claim may take a session whose paused run is ``paused`` (None: none):
    raises RunPaused or PauseChanged (the promises in the header)."""
    if paused is not None and resume is None:
        raise RunPaused([call.call_id for call in paused.pending], paused.pause_id)
    if resume is not None and (paused is None or paused.pause_id != resume):
        raise PauseChanged("the paused run is no longer the session's")


def paused_fields(paused: PausedRun) -> dict[str, Any]:
    """The stored form (a Firestore map; JSON for SQLite, the state apart). Raises
    StateTooLarge past the bounds (checked here, where every backend writes it)."""
    pending = [call.as_json() for call in paused.pending]
    if value_size(pending) > MAX_PENDING_BYTES:
        raise StateTooLarge(f"pending calls of {value_size(pending)} bytes")
    if len(paused.state) > MAX_STATE_BYTES:
        raise StateTooLarge(f"{len(paused.state)} bytes compressed")
    return {
        PAUSE_ID: paused.pause_id,
        PAUSE_PENDING: pending,
        PAUSE_FINGERPRINT: paused.fingerprint,
        PAUSED_AT: paused.paused_at,
        PAUSE_STATE: paused.state,
        PAUSE_ATTEMPTS: paused.attempts,
        PAUSE_FOLDED: paused.folded,
    }


def paused_from(fields: Mapping[str, Any] | None) -> PausedRun | None:
    if not isinstance(fields, Mapping) or not isinstance(fields.get(PAUSE_ID), str):
        return None
    return PausedRun(
        pause_id=fields[PAUSE_ID],
        pending=tuple(
            PendingCall(str(c["call_id"]), str(c["tool"]), str(c["arguments"]))
            for c in fields.get(PAUSE_PENDING) or ()
        ),
        fingerprint=str(fields.get(PAUSE_FINGERPRINT, "")),
        paused_at=fields[PAUSED_AT],
        state=bytes(fields.get(PAUSE_STATE) or b""),
        attempts=int(fields.get(PAUSE_ATTEMPTS) or 0),
        folded=int(fields.get(PAUSE_FOLDED) or 0),
    )


def logged(earlier: Sequence[Decision], new: Sequence[Decision]) -> list[Decision]:
    """The decision log after ``new``: the last MAX_DECISIONS that fit
    MAX_DECISION_LOG_BYTES (the newest always)."""
    kept: list[Decision] = []
    size = 0
    for decision in reversed([*earlier, *new][-MAX_DECISIONS:]):
        size += value_size(decision)
        if kept and size > MAX_DECISION_LOG_BYTES:
            break
        kept.append(decision)
    return kept[::-1]
