"""The data types and errors of conversation histories, shared by both backends
(``history.py``, Firestore; ``sqlite_history.py``, SQLite), the commit plan
(``commit_plan.py``) and their callers: a turn's ``Claim``, a stored ``History``, its
``Summary`` and ``UsageTotals``, what a ``delete`` did, and the errors the store raises
on purpose. The encoded history (each item as compact JSON and a newline) is spelled
here once, so the byte offsets both backends keep (``item_ends``, a summary's offset)
are the same. ``history.py``'s header has the layout, bounds and consistency.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.store.paused_runs import Decision, PausedRun, PendingCall
from agent.store.schema import (
    CACHED_INPUT_TOKENS,
    COST_USD,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    REQUESTS,
    UsageTotalsDoc,
)
from agent.store.summary_provenance import SummaryProvenance

MAX_TURN_BYTES = 3 * 1024 * 1024
"""Largest history growth one turn may add: our limit. Its commit is one gRPC message;
the emulator refuses messages over 4 MiB (real Firestore allows 10 MiB), and the tests
run on the emulator, so the service stays under the tighter cap."""

Item = dict[str, Any]


class StoreError(Exception):
    """Base of the errors this module raises on purpose."""


class SessionBusy(StoreError):
    """Another turn holds the session."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("session is busy")
        self.retry_after = retry_after


class SessionTaken(StoreError):
    """The id names a live session of another principal."""


class ClaimLost(StoreError):
    """The claim lapsed before the commit; nothing was written."""


class CommitFailed(StoreError):
    """Firestore failed the commit and the claim was fenced: nothing was written, and
    the commit can never land later."""


class CommitUnknown(StoreError):
    """Whether the commit landed could not be found out in time (Firestore did not
    answer). Anything the turn might reference must be kept."""


class TurnTooLarge(StoreError):
    """One turn's items exceed MAX_TURN_BYTES."""


class Deletion(enum.Enum):
    DELETED = "deleted"  # a live session of the caller's
    ABSENT = "absent"  # nothing live under this id (an expired history's leftovers went)
    NOT_YOURS = "not_yours"  # someone else's: left alone, reported to them as absent


@dataclass(frozen=True)
class Deleted:
    """What ``delete`` did, and the life (generation) whose documents it removed; for a
    session an earlier delete removed (its tombstone), the life that one removed, so a
    clean-up that failed then can be repeated."""

    outcome: Deletion
    generation: str | None = None


@dataclass(frozen=True)
class UsageTotals:
    """A session's running totals: what its committed turns spent on the model."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            # Rounded as each cost is: sums of float dollars drift in the last digits.
            round(self.cost_usd + other.cost_usd, 8),
        )

    def as_doc(self) -> UsageTotalsDoc:
        return {
            REQUESTS: self.requests,
            INPUT_TOKENS: self.input_tokens,
            CACHED_INPUT_TOKENS: self.cached_input_tokens,
            OUTPUT_TOKENS: self.output_tokens,
            COST_USD: self.cost_usd,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> UsageTotals:
        """From a stored map; a session written before totals existed has none (zero)."""
        if not isinstance(doc, dict):
            return cls()
        return cls(
            int(doc.get(REQUESTS) or 0),
            int(doc.get(INPUT_TOKENS) or 0),
            int(doc.get(CACHED_INPUT_TOKENS) or 0),
            int(doc.get(OUTPUT_TOKENS) or 0),
            float(doc.get(COST_USD) or 0.0),
        )


@dataclass(frozen=True)
class History:
    session_id: str
    items: list[Item]
    turns: int
    expire_at: dt.datetime
    summary: str | None = None
    summary_items: int = 0
    """How many leading items ``summary`` covers (they are still in ``items``)."""
    pending: tuple[PendingCall, ...] = ()
    """Tool calls of a paused run waiting for approval."""
    approvals: tuple[Decision, ...] = ()
    """The last approval decisions, oldest first."""
    totals: UsageTotals = UsageTotals()
    """The running usage totals of the session's committed turns."""
    pause_id: str | None = None
    """The paused run's id (what decisions name), when it waits for approval."""
    summary_provenance: SummaryProvenance | None = None
    """Where ``summary`` came from (None: no summary, or one older than provenance)."""

    @classmethod
    def of(
        cls,
        session_id: str,
        items: list[Item],
        turns: int,
        expire_at: dt.datetime,
        summary: Summary | None,
        paused: PausedRun | None,
        approvals: Sequence[Decision],
        totals: UsageTotals,
    ) -> History:
        """A history as a backend stores it: its summary and paused run whole."""
        return cls(
            session_id,
            items,
            turns,
            expire_at,
            summary.text if summary else None,
            summary.items if summary else 0,
            paused.pending if paused else (),
            tuple(approvals),
            totals,
            paused.pause_id if paused else None,
            summary.provenance if summary else None,
        )


@dataclass(frozen=True)
class Summary:
    """A running summary, and where the items it does not cover begin."""

    text: str
    items: int
    """Leading items of the whole history it covers."""
    offset: int
    """Byte offset in the encoded history of the first item it does not cover."""
    provenance: SummaryProvenance | None = None


@dataclass(frozen=True)
class SessionInfo:
    """Who owns a live session, and which life of its id it is."""

    owner: str | None
    generation: str | None


@dataclass(frozen=True)
class Claim:
    """A running turn's hold on a session, with the history it loaded."""

    session_id: str
    token: str
    update_time: Any  # protobuf Timestamp of the claim write: the commit's precondition
    new_session: bool
    history: list[Item]
    turns: int
    tail: bytes
    chunks: int
    stale_chunks: int  # chunk documents of an expired history, deleted at commit
    total_bytes: int
    created_at: dt.datetime
    until: dt.datetime
    """When the claim lapses (the turn's deadline)."""
    generation: str
    """The life of the session this turn belongs to."""
    replaced: bool = False
    """The claim took over the document of an earlier, dead life of this id."""
    summary: Summary | None = None
    """The running summary; ``history`` then holds only the items after it."""
    item_count: int = 0
    """Items in the whole stored history (``history`` may be only its uncovered end)."""
    item_ends: tuple[int, ...] = ()
    """Byte offset, in the whole encoded history, just past each item of ``history``."""
    token_ratio: float = 1.0
    paused: PausedRun | None = None
    """The paused run this claim resumes (``claim(resume=...)``), with its state."""
    approvals: tuple[Decision, ...] = ()
    totals: UsageTotals = UsageTotals()
    """The session's usage totals as the claim read them: a turn commits them plus its
    own usage (nobody else writes them while the claim is held)."""
    commits: tuple[str, ...] = ()
    """The recent commit tokens as the claim read them (the commit adds its own)."""
    chunks_expire_at: dt.datetime | None = None
    """No sealed chunk expires before it (None: not known, no chunk)."""


def new_generation() -> str:
    return secrets.token_urlsafe(12)


def item_line(item: Item) -> str:
    """One item of the encoded history, without its newline."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def encode(items: Sequence[Item]) -> bytes:
    return b"".join(item_line(item).encode() + b"\n" for item in items)


def decode(data: bytes) -> list[Item]:
    return [json.loads(line) for line in data.split(b"\n") if line]


def decode_from(data: bytes, start: int, base: int) -> tuple[list[Item], tuple[int, ...]]:
    """The items of ``data[start:]`` (``start`` is an item boundary), and the offset just
    past each, counted from ``base`` (where ``data`` begins in the whole history)."""
    items: list[Item] = []
    ends: list[int] = []
    position = start
    for line in data[start:].split(b"\n"):
        position += len(line) + 1
        if line:
            items.append(json.loads(line))
            ends.append(base + position)
    return items, tuple(ends)
