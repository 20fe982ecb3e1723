"""Charging every model call of a turn, whatever its outcome: ``Charging``.

A turn with a budget (``budget.py``) is admitted with a hold, runs with a ``Meter`` bound
(``agent/runtime/metering.py``: every model call of the turn, the summariser's too,
reports to it), and when it ends, by an answer, an error, a deadline or a reader who
left, ``finish`` replaces its hold by what the meter counted: a write of its own, not
part of the turn's commit, so a turn that stores nothing is charged all the same.
Session totals stay in the commit: they describe stored turns.

When every call has ended (the usual case) the charge is written at once, in the
request's thread, before the answer goes out. When a call is still being read (a stream
whose reader left, a call the run stopped waiting for), a thread waits for it up to
``wait_seconds`` and writes the charge then; a call still open after that is charged its
reservation. A charge is written once per turn; what happens to a lost or slow write is
``store/spend.py``'s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

from agent.runtime import metering
from agent.runtime.metering import Meter
from agent.runtime.pricing import Price
from agent.turn.budget import Budget, Hold


class TurnCharge:
    """One admitted turn's hold and meter."""

    def __init__(self, budget: Budget, hold: Hold, meter: Meter, wait_seconds: float) -> None:
        self.hold = hold
        self.meter = meter
        self._budget = budget
        self._wait = wait_seconds
        self._once = threading.Lock()
        self._done = False

    def finish(self) -> None:
        """The turn has ended: charge it (once)."""
        with self._once:
            if self._done:
                return
            self._done = True
        if self.meter.open_calls == 0:
            self._settle()
            return
        threading.Thread(target=self._settle_later, name="turn-charge", daemon=True).start()

    def _settle_later(self) -> None:
        self.meter.wait(self._wait)
        self._settle()

    def _settle(self) -> None:
        calls = len(self.meter.charges) + self.meter.open_calls
        self._budget.settle(self.hold, self.meter.total_micros(), calls)


class Charging:
    """Admits and charges the turns of principals, when a budget is set."""

    def __init__(
        self, budget: Budget | None, prices: Mapping[str, Price], *, wait_seconds: float
    ) -> None:
        self.budget = budget
        self._prices = prices
        self._wait = wait_seconds

    def start(self, owner: str | None) -> TurnCharge | None:
        """Admit a turn of ``owner`` (raises ApiError 429/503); None without a budget."""
        if self.budget is None or owner is None:
            return None
        hold = self.budget.admit(owner)
        meter = Meter(self._prices, cap_micros=hold.micros)
        return TurnCharge(self.budget, hold, meter, self._wait)


@contextlib.contextmanager
def metered(charge: TurnCharge | None) -> Iterator[None]:
    """The model calls started in the block report to ``charge``'s meter."""
    with metering.bind(charge.meter if charge is not None else None):
        yield


def finish(charge: TurnCharge | None) -> None:
    if charge is not None:
        charge.finish()
