"""``BUDGET_USD_PER_PRINCIPAL_PER_DAY``: a caller past its daily budget gets no model call.

Checked before a turn claims its session, so a refused turn writes nothing at all (a
replay of a stored Idempotency-Key response is served before it: it costs nothing).
Refused: 429 ``budget_exceeded`` with ``Retry-After`` until the next UTC midnight, when
the day's spend starts again from zero. A turn that passes records its cost, its model
calls and the history summariser's, in its own commit, on the day it was checked
against (a turn that straddles midnight counts on the day it started).

The spend and its bound on overshoot are the store's (``agent/store/spend.py``): at
most the cost of the turns already running when the budget is reached; turns that fail
record nothing. The clock is injectable so that tests can move to the next day.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

from agent.base import errors
from agent.base.clock import utc_now
from agent.store.backend import SpendBackend
from agent.turn.store_errors import store_errors_as_api_errors


def seconds_to_next_day(now: dt.datetime) -> int:
    """Whole seconds from ``now`` to the next UTC midnight, rounded up, at least 1."""
    utc = now.astimezone(dt.UTC)
    midnight = dt.datetime.combine(utc.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, math.ceil((midnight - utc).total_seconds()))


class Budget:
    """A daily budget in US dollars per principal, over a SpendBackend."""

    def __init__(
        self,
        spend: SpendBackend,
        limit_usd: float,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._spend = spend
        self._limit = limit_usd
        self._clock = clock

    def check(self, principal: str) -> dt.date:
        """The UTC day the turn runs on, if the principal's spend of it is under the
        budget; raises ApiError 429 ``budget_exceeded`` otherwise (503 when the store
        cannot say)."""
        now = self._clock().astimezone(dt.UTC)
        day = now.date()
        with store_errors_as_api_errors():
            spent = self._spend.spent(principal, day)
        if spent >= self._limit:
            raise errors.budget_exceeded(seconds_to_next_day(now))
        return day

    def recording(self, principal: str, day: dt.date, cost_usd: float) -> Callable[[Any], None]:
        """The write adding a turn's cost to the principal's spend, for its commit."""
        return self._spend.recording(principal, day, cost_usd)
