"""What one turn's commit writes, worked out once (``plan_commit``) and applied by each
backend: Firestore as one batch under the claim's precondition (``history.py``), SQLite
as one transaction (``sqlite_history.py``). Both backends' ``commit`` is the one of
``PlannedCommits``: it plans, and the backend's ``_apply`` maps the plan to its documents
or rows, adding only what is its own (Firestore's commit marks, by which a lost reply is
resolved). Anything new a turn must write is added to the plan here, once.

The layout, size bounds, consistency and expiry rules the plan follows are stated once,
in ``history.py``'s header; the encoding of items in ``history_types.py``.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.store.history_types import (
    MAX_TURN_BYTES,
    Claim,
    History,
    Item,
    Summary,
    TurnTooLarge,
    UsageTotals,
    item_line,
)
from agent.store.paused_runs import Decision, PausedRun, logged

CHUNK_BYTES = 512 * 1024
"""Sealed chunks of the encoded history are exactly this long (Firestore's layout)."""

ExtraWrites = Callable[[Any, dt.datetime], None]
"""Writes of the caller's that join the commit (``extra_writes(batch, expire_at)``)."""


@dataclass(frozen=True)
class CommitPlan:
    """Everything one turn's commit writes, and the history it leaves."""

    claim: Claim
    """The claim the commit ends (its token, precondition, generation)."""
    lines: tuple[str, ...]
    """The new items, each as one line of the encoded history (no newline)."""
    replace: bool
    """The new items are the whole history (library use), not appended to it."""
    first_item: int
    """Position of the first new item in the whole history."""
    items: int
    """Items in the whole history after the commit."""
    total_bytes: int
    """Size of the encoded history after the commit."""
    turns: int
    tail: bytes
    """The encoded history's end not sealed in a chunk (Firestore's layout; SQLite keeps
    items as rows and reads none of the chunk fields)."""
    sealed: tuple[tuple[int, bytes], ...]
    """The chunks this commit seals: (index, exactly CHUNK_BYTES)."""
    chunks: int
    """Sealed chunks after the commit."""
    refresh: range
    """Chunks sealed earlier whose expiry slides to ``chunk_expire_at`` (``Expiry``)."""
    dropped: range
    """Chunk documents past ``chunks`` (a replaced history's, or a dead life's): deleted."""
    chunk_expire_at: dt.datetime
    """What a chunk this commit writes expires at: half a TTL past the session."""
    chunk_floor: dt.datetime | None
    """No sealed chunk expires before it after the commit (None: no chunk)."""
    summary: Summary | None
    """The running summary after the commit (the turn's new one, or the claim's)."""
    token_ratio: float | None
    """The new calibration; None keeps the stored one."""
    paused: PausedRun | None
    """The run the turn paused; None clears any."""
    approvals: tuple[Decision, ...]
    """The decision log after the commit."""
    decided: bool
    """The turn added decisions (``approvals`` changed)."""
    totals: UsageTotals | None
    """The new usage totals (absolute); None keeps the stored ones."""
    now: dt.datetime
    expire_at: dt.datetime
    """The session's new expiry: now + the TTL."""
    extra_writes: ExtraWrites | None
    stored: History
    """What the commit leaves, returned to the turn once it landed."""


def plan_commit(
    claim: Claim,
    new_items: Sequence[Item],
    now: dt.datetime,
    ttl: dt.timedelta,
    *,
    replace: bool = False,
    count_turn: bool = True,
    extra_writes: ExtraWrites | None = None,
    summary: Summary | None = None,
    token_ratio: float | None = None,
    paused: PausedRun | None = None,
    decisions: Sequence[Decision] = (),
    totals: UsageTotals | None = None,
) -> CommitPlan:
    """The plan of ``claim``'s commit (the arguments are the backends' ``commit``'s).
    Raises TurnTooLarge, and ValueError for a replace of a summarised history."""
    lines = tuple(item_line(item) for item in new_items)
    added = b"".join(line.encode() + b"\n" for line in lines)
    if len(added) > MAX_TURN_BYTES:
        raise TurnTooLarge(f"{len(added)} bytes in one turn")
    if replace and claim.summary is not None:
        # The claim holds only the end of the history: rewriting it whole would drop
        # the rest. Only library use replaces, and it never summarises.
        raise ValueError("cannot replace a summarised history")
    first_chunk = 0 if replace else claim.chunks
    tail = added if replace else claim.tail + added
    expire_at = now + ttl
    chunk_expire_at = expire_at + ttl / 2  # see Expiry in history.py's header
    sealed: list[tuple[int, bytes]] = []
    while len(tail) >= CHUNK_BYTES:
        sealed.append((first_chunk + len(sealed), tail[:CHUNK_BYTES]))
        tail = tail[CHUNK_BYTES:]
    chunks = first_chunk + len(sealed)
    # Sealed earlier: only their expiry slides, and only when it would fall before the
    # session document's.
    refresh = chunks_to_refresh(first_chunk, claim.chunks_expire_at, expire_at)
    kept_floor = claim.chunks_expire_at if first_chunk and not refresh else None
    before = claim.item_count or len(claim.history)
    kept = summary or claim.summary
    log = tuple(logged(claim.approvals, decisions))
    turns = claim.turns + (1 if count_turn else 0)
    return CommitPlan(
        claim=claim,
        lines=lines,
        replace=replace,
        first_item=0 if replace else before,
        items=len(new_items) if replace else before + len(new_items),
        total_bytes=len(added) if replace else claim.total_bytes + len(added),
        turns=turns,
        tail=tail,
        sealed=tuple(sealed),
        chunks=chunks,
        refresh=refresh,
        dropped=range(chunks, max(claim.chunks, claim.stale_chunks)),
        chunk_expire_at=chunk_expire_at,
        chunk_floor=min(kept_floor or chunk_expire_at, chunk_expire_at) if chunks else None,
        summary=kept,
        token_ratio=token_ratio,
        paused=paused,
        approvals=log,
        decided=bool(decisions),
        totals=totals,
        now=now,
        expire_at=expire_at,
        extra_writes=extra_writes,
        stored=History.of(
            claim.session_id,
            [*([] if replace else claim.history), *new_items],
            turns,
            expire_at,
            kept,
            paused,
            log,
            totals or claim.totals,
        ),
    )


class PlannedCommits(abc.ABC):
    """A history backend whose ``commit`` applies the plan of ``plan_commit``."""

    _ttl: dt.timedelta
    """The session TTL: a commit slides the session's expiry to now + this."""

    def commit(
        self,
        claim: Claim,
        new_items: Sequence[Item],
        now: dt.datetime,
        *,
        replace: bool = False,
        count_turn: bool = True,
        extra_writes: ExtraWrites | None = None,
        time_left: float | None = None,
        summary: Summary | None = None,
        token_ratio: float | None = None,
        paused: PausedRun | None = None,
        decisions: Sequence[Decision] = (),
        totals: UsageTotals | None = None,
    ) -> History:
        """Append ``new_items`` (or, with ``replace``, make them the whole history)
        and release the claim, in one atomic write: a Firestore batch conditioned on
        the claim write, or a SQLite transaction that writes only while the row holds
        the claim.

        ``extra_writes(batch, expire_at)`` adds writes of its own to that write (the
        batch, or the transaction's connection), so they land if and only if the turn
        does (the idempotency record). ``time_left`` (seconds) bounds the commit and,
        on Firestore, should its reply be lost, finding out whether it landed; without
        it each call gets the store's timeout; with too little left the claim is left
        to lapse unused (ClaimLost). ``summary`` replaces the running summary in the
        same write (a summary covers only stored items, so it lands with them or not at
        all); ``token_ratio`` updates the session's calibration; ``totals`` replaces the
        usage totals (absolute values: the claim's plus this turn's, so a commit that
        fails adds nothing). ``paused`` is the run the turn paused (None: the session
        has none after this commit, so a resumed run's state goes with it);
        ``decisions`` join the decision log.

        Returns when the turn is stored, also when the reply was lost but the turn
        landed. Raises TurnTooLarge, ClaimLost (the claim had lapsed or was taken;
        nothing written), and on Firestore CommitFailed (not written, and fenced so it
        never will be) or CommitUnknown (could not be found out in time); the claim is
        no longer ours after any of them (SQLite's local transaction landed or did not:
        never the last two)."""
        plan = plan_commit(
            claim,
            new_items,
            now,
            self._ttl,
            replace=replace,
            count_turn=count_turn,
            extra_writes=extra_writes,
            summary=summary,
            token_ratio=token_ratio,
            paused=paused,
            decisions=decisions,
            totals=totals,
        )
        return self._apply(plan, time_left)

    @abc.abstractmethod
    def _apply(self, plan: CommitPlan, time_left: float | None) -> History:
        """Write ``plan`` as one atomic write; ``plan.stored`` once it landed."""


def chunks_to_refresh(
    sealed: int, floor: dt.datetime | None, session_expire_at: dt.datetime
) -> range:
    """Which of ``sealed`` chunks a write that moves the session document's expiry to
    ``session_expire_at`` must slide: all when the earliest of their expiries (``floor``;
    None: not known) is before it, else none. So no chunk ever expires before its
    session document, and a chunk slid to half a TTL past the document is left alone
    until the document's expiry passes that (``Expiry`` in history.py's header)."""
    if floor is not None and floor >= session_expire_at:
        return range(0)
    return range(sealed)
