"""``BUDGET_USD_PER_PRINCIPAL_PER_DAY``: a caller past its daily budget gets no model call.

Admission, before a turn claims its session: the turn first *holds* its reservation R
(``BUDGET_RESERVE_USD_PER_TURN``, by default a tenth of the budget) in the store, then
reads what came before its hold (``SpendBackend.hold``): what the principal's settled
turns of the day were charged plus what the turns admitted before it hold. If that has
reached the budget, its hold is released and the caller gets 429 ``budget_exceeded``
with ``Retry-After`` until the next UTC midnight, when the day starts again from zero.
A replay of a stored Idempotency-Key response is served before this: it costs nothing.

When the turn ends, whatever its outcome, its hold is replaced by what its model calls
were charged (``agent/turn/metering.py``), apart from its commit, on the day it was
admitted on (a turn that straddles midnight counts on the day it started).

The bound on overshoot (docs/design.md): holds are written before the read and ordered,
so the admitted turn whose hold came last saw every other admitted turn, each at its hold
R or its settled charge, and saw less than the budget. A turn starts no model call once it
has been charged R (``Meter``), so a turn is charged at most R plus what its last call
cost beyond that. A principal's day therefore ends below budget + R + (the turns in
flight at once, at most budget / R + 1) x (one call's cost beyond R): it does not grow with
the number of parallel requests, and with R at least a turn's worst case it is budget + R.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from agent.base import errors
from agent.base.clock import utc_now
from agent.store.backend import SpendBackend
from agent.store.calls import StoreUnavailable
from agent.turn.store_errors import store_errors_as_api_errors

log = logging.getLogger(__name__)

DEFAULT_RESERVE_SHARE = 0.1
"""Without ``BUDGET_RESERVE_USD_PER_TURN``, a turn holds this share of the budget."""


def seconds_to_next_day(now: dt.datetime) -> int:
    """Whole seconds from ``now`` to the next UTC midnight, rounded up, at least 1."""
    utc = now.astimezone(dt.UTC)
    midnight = dt.datetime.combine(utc.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, math.ceil((midnight - utc).total_seconds()))


@dataclass(frozen=True)
class Hold:
    """An admitted turn's reservation: whose, which day, and how much (micro-dollars)."""

    principal: str
    day: dt.date
    turn: str
    micros: int


class Budget:
    """A daily budget in US dollars per principal, over a SpendBackend."""

    def __init__(
        self,
        spend: SpendBackend,
        limit_usd: float,
        clock: Callable[[], dt.datetime] = utc_now,
        *,
        reserve_usd: float | None = None,
    ) -> None:
        self._spend = spend
        self._limit = round(limit_usd * 1_000_000)
        reserve = reserve_usd if reserve_usd is not None else limit_usd * DEFAULT_RESERVE_SHARE
        self.reserve_micros = max(1, round(reserve * 1_000_000))
        self._clock = clock

    def admit(self, principal: str) -> Hold:
        """Hold a turn's reservation if the principal's day is under the budget; raises
        ApiError 429 ``budget_exceeded`` otherwise (503 when the store cannot say)."""
        now = self._clock().astimezone(dt.UTC)
        hold = Hold(principal, now.date(), secrets.token_urlsafe(12), self.reserve_micros)
        try:
            with store_errors_as_api_errors():
                before = self._spend.hold(principal, hold.day, hold.turn, hold.micros)
        except BaseException:
            self.release(hold)  # the hold may have landed though its reply did not
            raise
        if before.total_micros >= self._limit:
            self.release(hold)
            raise errors.budget_exceeded(seconds_to_next_day(now))
        return hold

    def settle(self, hold: Hold, cost_micros: int, calls: int) -> None:
        """Replace the hold by what the turn was charged. Best effort: should the store
        not take it, the hold stays and the turn is charged its reservation."""
        try:
            self._spend.settle(hold.principal, hold.day, hold.turn, cost_micros, calls)
        except StoreUnavailable:
            log.warning(
                "a turn's charge could not be written: it stays charged its reservation",
                extra={"fields": {"charged_micros": cost_micros, "held_micros": hold.micros}},
            )

    def release(self, hold: Hold) -> None:
        """A refused turn's hold goes (it made no model call)."""
        with contextlib.suppress(StoreUnavailable):
            self._spend.settle(hold.principal, hold.day, hold.turn, 0, 0)
