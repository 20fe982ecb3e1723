"""What each principal spent on the model per UTC day, in Firestore: ``SpendStore``.

Why it exists: ``BUDGET_USD_PER_PRINCIPAL_PER_DAY`` (``agent/turn/budget.py``) needs a
principal's spend today before each turn, every model call a turn makes must be charged
whatever the turn's outcome, and the turns in flight must hold part of the budget so that
parallel turns cannot all pass the check at once.

Layout
------
::

    agent_spend/{sha256(principal)}_{YYYY-MM-DD}_{turn}      one per admitted turn
        owner        str        the principal
        day          str        the UTC day, YYYY-MM-DD
        held_micros  int        the turn's reservation while it runs; 0 once settled
        holding      bool       true until settled (an equality filter for the holds)
        cost_micros  int        what its model calls were charged (0 until settled)
        calls        int        its model calls
        expire_at    Timestamp  TTL field: EXPIRE_DAYS after the day ends

Amounts are integer micro-dollars: sums of integers are exact, whatever the order.

A turn writes its document twice, apart from its commit: ``hold`` when it is admitted,
``settle`` when it has ended (each a plain ``set`` of the whole document, so a retry
writes the same thing again and the last write wins), and nobody else writes it: one
document per turn is never hot, and no two turns ever contend.

A day's spend is one aggregation query, ``sum(cost_micros)`` and ``sum(held_micros)``
over the principal's documents of the day (two equality filters, served by the
automatic single-field indexes). Firestore bills an aggregation one document read per
batch of up to 1000 index entries it matches (at least one): one read for a principal's
first 1000 turns of a day, where the eight-shard counter this replaces read eight
documents for every check (docs/performance.md).

Admission (``hold``) writes the turn's hold first and then reads what came before it:
the settled charges (the aggregation) and the holds still in place (a query on
``holding == true``: one read per turn in flight) whose document was created before the
new one (creation time, then id). Ordered so, a burst of turns arriving together is not
refused as a whole (each would otherwise see all the others' holds): the first hold sees
none of the rest, and every admitted turn was seen by the last one admitted.

Consistency
-----------
* ``charged`` is a strongly consistent query: it sees every hold and settle whose reply
  came back before it ran.
* A lost reply or one held past the timeout: the write is applied once the server has it,
  and the client's retry writes the same document again: no double charge. A ``settle``
  that never lands (Firestore down for the whole retry) leaves the hold in place: the
  turn stays charged its reservation, never less (logged by the turn layer).
* A ``hold`` that fails makes the turn 503 before any model call; should the hold have
  landed anyway, it stays charged as a reservation on that day (a conservative error),
  unless the turn layer's release reaches Firestore.

Size bounds: a document holds six small fields. A principal has one document per
admitted turn of a day; each goes EXPIRE_DAYS after its day ended (TTL deletion is lazy:
typically within a day more).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from agent.store.calls import bounded_retry, outage_as_unavailable
from agent.store.schema import (
    CALLS,
    COST_MICROS,
    DAY,
    HELD_MICROS,
    HOLDING,
    OWNER,
    SPEND,
    TTL_FIELD,
)

EXPIRE_DAYS = 2
"""How long a day's documents are kept after the day ends: the budget needs only today's."""


@dataclass(frozen=True)
class DaySpend:
    """A principal's day: what its settled turns were charged and what the turns still
    in flight (or never settled) hold, in micro-dollars."""

    cost_micros: int = 0
    held_micros: int = 0

    @property
    def total_micros(self) -> int:
        return self.cost_micros + self.held_micros


def day_key(day: dt.date) -> str:
    return day.isoformat()


def expiry_of(day: dt.date) -> dt.datetime:
    """When a day's spend may go: EXPIRE_DAYS after the day ends (UTC)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start + dt.timedelta(days=1 + EXPIRE_DAYS)


def usd(micros: int) -> float:
    return micros / 1_000_000


class SpendStore:
    """Reads and records principals' daily spend. Thread-safe; calls are synchronous."""

    def __init__(self, client: firestore.Client, *, timeout_seconds: float) -> None:
        self._client = client
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    def charged(self, principal: str, day: dt.date) -> DaySpend:
        """The principal's day, in one aggregation query; raises StoreUnavailable."""
        query = self._day(principal, day)
        # Typed as returning a class (the library's annotation is wrong): an instance.
        aggregate: Any = query.sum(COST_MICROS, alias=COST_MICROS)
        aggregate = aggregate.sum(HELD_MICROS, alias=HELD_MICROS)
        with outage_as_unavailable():
            rows = aggregate.get(retry=self._retry, timeout=self._timeout)
        found = {result.alias: result.value for row in rows for result in row}
        # An empty sum comes back as 0.0: the fields themselves are integers.
        return DaySpend(int(found.get(COST_MICROS) or 0), int(found.get(HELD_MICROS) or 0))

    def spent(self, principal: str, day: dt.date) -> float:
        """US dollars the principal's settled turns of ``day`` were charged."""
        return usd(self.charged(principal, day).cost_micros)

    def hold(self, principal: str, day: dt.date, turn: str, micros: int) -> DaySpend:
        """Turn ``turn`` holds ``micros`` of the principal's day; returns what was
        charged and held before it (module docstring). Raises StoreUnavailable."""
        self._write(principal, day, turn, held=micros, cost=0, calls=0)
        holding = (
            self._day(principal, day)
            .where(filter=FieldFilter(HOLDING, "==", True))
            .select([HELD_MICROS])
        )
        with outage_as_unavailable():
            holds = list(holding.stream(retry=self._retry, timeout=self._timeout))
        mine = self._ref(principal, day, turn).id
        order = {snap.id: (snap.create_time, snap.id) for snap in holds}
        before = order.get(mine)
        held = sum(
            int((snap.to_dict() or {}).get(HELD_MICROS) or 0)
            for snap in holds
            if snap.id != mine and (before is None or order[snap.id] < before)
        )
        return DaySpend(self.charged(principal, day).cost_micros, held)

    def settle(self, principal: str, day: dt.date, turn: str, cost_micros: int, calls: int) -> None:
        """Turn ``turn`` ended: its hold goes, its charge stays; raises StoreUnavailable."""
        self._write(principal, day, turn, held=0, cost=cost_micros, calls=calls)

    def _day(self, principal: str, day: dt.date) -> firestore.Query:
        query: firestore.Query = (
            self._client.collection(SPEND)
            .where(filter=FieldFilter(OWNER, "==", principal))
            .where(filter=FieldFilter(DAY, "==", day_key(day)))
        )
        return query

    def _write(
        self, principal: str, day: dt.date, turn: str, *, held: int, cost: int, calls: int
    ) -> None:
        doc: dict[str, Any] = {
            OWNER: principal,
            DAY: day_key(day),
            HELD_MICROS: held,
            HOLDING: held > 0,
            COST_MICROS: cost,
            CALLS: calls,
            TTL_FIELD: expiry_of(day),
        }
        with outage_as_unavailable():
            self._ref(principal, day, turn).set(doc, retry=self._retry, timeout=self._timeout)

    def _ref(self, principal: str, day: dt.date, turn: str) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(SPEND).document(
            f"{principal_hash(principal)}_{day_key(day)}_{turn}"
        )
        return ref


def principal_hash(principal: str) -> str:
    # Principals are emails or key names: hashed, the id has a fixed length and no
    # character Firestore refuses in an id.
    return hashlib.sha256(principal.encode("utf-8", "surrogateescape")).hexdigest()
