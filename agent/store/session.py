"""``FirestoreSession``: the Agents SDK's Session protocol over ``HistoryStore``.

Two ways to use it:

* On its own, like the SDK's SQLiteSession::

      session = FirestoreSession("user-42", store)
      await Runner.run(agent, "hi", session=session)

  Each ``add_items`` call is then its own atomic commit (claim, append, release).

* As the service does, one turn at a time: ``begin_turn()`` claims the session and
  loads its history once; during the run ``get_items`` and ``add_items`` touch only
  memory; ``commit_turn()`` writes everything the run added in one commit, or
  ``abort_turn()`` releases the claim and leaves the history as it was. The runner
  calls ``add_items`` several times per run, so this is what makes a turn atomic.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from agents import TResponseInputItem
from agents.memory import SessionSettings
from agents.memory.session_settings import resolve_session_limit

from agent.base.clock import utc_now
from agent.store.backend import HistoryBackend
from agent.store.history import (
    Claim,
    ClaimLost,
    CommitFailed,
    CommitUnknown,
    History,
    Item,
    SessionBusy,
    Summary,
    UsageTotals,
)
from agent.store.paused_runs import Decision, PausedRun


class FirestoreSession:
    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        store: HistoryBackend,
        *,
        claim_seconds: float = 60.0,
        clock: Callable[[], dt.datetime] = utc_now,
        owner: str | None = None,
        session_settings: SessionSettings | None = None,
        busy_wait_seconds: float = 10.0,
    ) -> None:
        """``owner``: the principal acting; None skips ownership checks (library use).
        ``session_settings``: the SDK's settings (``limit`` caps what ``get_items``
        returns). ``busy_wait_seconds``: how long a library-use write waits for another
        writer's claim before it gives up with SessionBusy."""
        self.session_id = session_id
        self.session_settings = session_settings
        self._busy_wait = busy_wait_seconds
        self._summary: Summary | None = None
        self._token_ratio: float | None = None
        self._owner = owner
        self._store = store
        self._claim_seconds = claim_seconds
        self._clock = clock
        self._claim: Claim | None = None
        self._pending: list[Item] = []
        self._popped = False
        self._aborted = False

    # -- turn mode (synchronous: called from the request thread) -------------------

    def begin_turn(self, until: dt.datetime, resume: str | None = None) -> Claim:
        """Claim the session until ``until``; raises SessionBusy. ``resume`` names the
        paused run this turn continues (``HistoryBackend.claim``)."""
        if self._claim is not None:
            raise RuntimeError("a turn is already open on this session object")
        self._claim = self._store.claim(
            self.session_id, self._clock(), until, self._owner, resume=resume
        )
        self._pending, self._popped, self._aborted = [], False, False
        self._summary, self._token_ratio = None, None
        return self._claim

    def adopt_turn(self, claim: Claim, pending: Sequence[Item]) -> None:
        """Carry on a turn begun elsewhere (a background run's earlier steps, in this
        process or another): ``claim`` is its claim, taken again (``reclaim``), and
        ``pending`` the items its steps added so far."""
        if self._claim is not None:
            raise RuntimeError("a turn is already open on this session object")
        self._claim = claim
        self._pending, self._popped, self._aborted = list(pending), False, False
        self._summary, self._token_ratio = None, None

    def pending_items(self) -> list[Item]:
        """What the open turn will commit so far (the items its run added)."""
        return list(self._pending)

    @property
    def has_open_turn(self) -> bool:
        return self._claim is not None

    def commit_turn(
        self,
        extra_writes: Callable[[Any, dt.datetime], None] | None = None,
        time_left: float | None = None,
        paused: PausedRun | None = None,
        decisions: Sequence[Decision] = (),
        totals: UsageTotals | None = None,
    ) -> History:
        """Write the turn's items in one commit (with ``extra_writes``, ``time_left``,
        ``totals``, ``paused`` and ``decisions``, see ``HistoryStore.commit``). If the
        commit fails before it is
        sent, the turn stays open, so that ``abort_turn`` can still release the claim;
        once it was sent and failed (ClaimLost, CommitFailed, CommitUnknown) the claim
        is settled and the turn is closed: released by the store's fence, lost, or
        left to lapse when Firestore cannot be asked."""
        if self._claim is None:
            raise RuntimeError("no turn is open on this session object")
        try:
            # Rare: the run removed stored items, so the history is rewritten whole.
            history = self._store.commit(
                self._claim,
                self._pending,
                self._clock(),
                replace=self._popped,
                extra_writes=extra_writes,
                time_left=time_left,
                summary=self._summary,
                token_ratio=self._token_ratio,
                paused=paused,
                decisions=decisions,
                totals=totals,
            )
        except (ClaimLost, CommitFailed, CommitUnknown):
            self._claim, self._aborted = None, True
            raise
        self._claim = None
        return history

    def set_summary(self, summary: Summary) -> None:
        """A new running summary, written in the open turn's commit (or not at all)."""
        if self._claim is None:
            raise RuntimeError("no turn is open on this session object")
        self._summary = summary

    def reset_turn_items(self) -> None:
        """Forget what the open turn's run added (to run it again, after the provider
        refused its context)."""
        if self._claim is None:
            raise RuntimeError("no turn is open on this session object")
        self._pending, self._popped = [], False

    def set_token_ratio(self, ratio: float) -> None:
        """The session's calibrated token ratio, written in the open turn's commit."""
        self._token_ratio = ratio

    def rewrite_turn(self, rewrite: Callable[[list[Item]], list[Item]]) -> None:
        """Replace the items the open turn will commit, e.g. to keep a preview of an
        answer too large for the history instead of the answer."""
        if self._claim is None:
            raise RuntimeError("no turn is open on this session object")
        self._pending = rewrite(self._pending)

    def abort_turn(self) -> None:
        # A cancelled run can take a moment to stop; without a claim its add_items
        # would write straight to the store, so an aborted turn refuses them.
        self._aborted = True
        self._store.release(self._take_claim())

    def _take_claim(self) -> Claim:
        if self._claim is None:
            raise RuntimeError("no turn is open on this session object")
        claim, self._claim = self._claim, None
        return claim

    # -- the Session protocol --------------------------------------------------------

    # The SDK's items are TypedDicts; the store keeps them as plain JSON objects.

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        if self._claim is not None:
            items = self._current()
        else:
            history = await asyncio.to_thread(
                self._store.load, self.session_id, self._clock(), self._owner
            )
            items = history.items if history else []
        limit = resolve_session_limit(limit, self.session_settings)
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return cast(list[TResponseInputItem], items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        self._refuse_if_aborted()
        plain = cast(list[Item], list(items))
        if self._claim is not None:
            self._pending.extend(plain)
            return
        await asyncio.to_thread(self._write_now, plain, replace=False)

    async def pop_item(self) -> TResponseInputItem | None:
        self._refuse_if_aborted()
        popped: Item | None = None
        if self._claim is not None:
            if self._pending:
                popped = self._pending.pop()
            elif current := self._current():
                self._pending, self._popped = current[:-1], True
                popped = current[-1]
        else:
            history = await asyncio.to_thread(
                self._store.load, self.session_id, self._clock(), self._owner
            )
            if history is not None and history.items:
                await asyncio.to_thread(self._write_now, history.items[:-1], replace=True)
                popped = history.items[-1]
        return cast(TResponseInputItem | None, popped)

    async def clear_session(self) -> None:
        self._refuse_if_aborted()
        await asyncio.to_thread(self._store.delete, self.session_id, self._clock(), self._owner)

    def _refuse_if_aborted(self) -> None:
        if self._aborted:
            raise RuntimeError("this session's turn was aborted; nothing more is written")

    def _current(self) -> list[Item]:
        assert self._claim is not None
        if self._popped:
            return list(self._pending)
        return [*self._claim.history, *self._pending]

    def _write_now(self, items: list[Item], *, replace: bool) -> None:
        claim = self._claim_waiting()
        try:
            self._store.commit(claim, items, self._clock(), replace=replace, count_turn=not replace)
        except (ClaimLost, CommitFailed, CommitUnknown):
            raise  # the claim is settled already
        except BaseException:
            self._store.release(claim)
            raise

    def _claim_waiting(self) -> Claim:
        """A claim for one library-use write. Concurrent writers on one session take
        turns: a busy session is retried with backoff for up to ``busy_wait_seconds``
        (as the SDK's own sessions serialise writes), then SessionBusy."""
        gives_up = time.monotonic() + self._busy_wait
        pause = 0.02
        while True:
            now = self._clock()
            until = now + dt.timedelta(seconds=self._claim_seconds)
            try:
                return self._store.claim(self.session_id, now, until, self._owner)
            except SessionBusy:
                if time.monotonic() + pause > gives_up:
                    raise
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)
