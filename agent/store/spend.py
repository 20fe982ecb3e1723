"""What each principal spent on the model per UTC day, in Firestore: ``SpendStore``.

Why it exists: ``BUDGET_USD_PER_PRINCIPAL_PER_DAY`` (``agent/turn/budget.py``) needs a
principal's spend today before each turn, every model call a turn makes must be charged
whatever the turn's outcome, and the turns in flight must hold part of the budget so that
parallel turns cannot all pass the check at once.

Layout
------
::

    agent_spend/{sha256(principal)}_{YYYY-MM-DD}/agent_spend_turns/{turn}
        owner          str        the principal
        day            str        the UTC day, YYYY-MM-DD
        charge_micros  int        what the day counts for the turn: its hold while it
                                  runs, what its model calls were charged once settled
        holding        bool       true until settled
        calls          int        its model calls (0 until settled)
        expire_at      Timestamp  TTL field: EXPIRE_DAYS after the day ends

One subcollection per principal and day (its parent document is never written), one
document per admitted turn. Amounts are integer micro-dollars: sums of integers are
exact, whatever the order.

A turn writes its document twice, apart from its commit: ``hold`` when it is admitted,
``settle`` when it has ended, each a plain ``set`` of the whole document (a retry writes
the same thing again; the last write wins), and nobody else writes it: one document per
turn is never hot, and no two turns ever contend.

A day's spend is one aggregation query, ``sum(charge_micros)`` over the day's
subcollection: no filter, so the automatic single-field index serves it (no composite
index to deploy). Firestore bills an aggregation one document read per batch of up to
1000 index entries it matches (at least one): one read for a principal's first 1000 turns
of a day, where the eight-shard counter this replaces read eight documents at every check
(docs/performance.md). The holds in place are a query on ``holding == true`` (one read per
turn in flight; a single-field equality).

Admission (``hold``) writes the turn's hold first and then reads what came before it: the
day's total less the holds in place, plus the holds whose document was created before the
new one (creation time, then id; a hold counts only if the total saw it, by its creation
time against the aggregation's read time). Ordered so, a burst of turns arriving together is not
refused as a whole (each would otherwise see all the others' holds): the first hold sees
none of the rest, and every admitted turn was seen by the last one admitted.

Consistency
-----------
* The queries are strongly consistent: they see every hold and settle whose reply came
  back before they ran. They are two reads: a turn settled between them is counted at its
  hold (the conservative direction).
* A lost reply or one held past the timeout: the write is applied once the server has it,
  and the client's retry writes the same document again: no double charge. A ``settle``
  that never lands (Firestore down for the whole retry) leaves the hold in place: the
  turn stays charged its reservation, never less (logged by the turn layer).
* A ``hold`` that fails makes the turn 503 before any model call; should the hold have
  landed anyway, it stays charged as a reservation on that day (a conservative error),
  unless the turn layer's release reaches Firestore.

Size bounds: a document holds six small fields. A principal has one document per
admitted turn of a day; each goes EXPIRE_DAYS after its day ended (TTL deletion is lazy:
typically within a day more; the collection group has its own TTL policy).
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
    CHARGE_MICROS,
    DAY,
    HOLDING,
    OWNER,
    SPEND,
    SPEND_TURNS,
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
        """The principal's day; raises StoreUnavailable."""
        total, read_at = self._total(principal, day)
        held = sum(m for key, m in self._holds(principal, day) if key[0] <= read_at)
        return DaySpend(total - held, held)

    def spent(self, principal: str, day: dt.date) -> float:
        """US dollars the principal's settled turns of ``day`` were charged."""
        return usd(self.charged(principal, day).cost_micros)

    def hold(self, principal: str, day: dt.date, turn: str, micros: int) -> DaySpend:
        """Turn ``turn`` holds ``micros`` of the principal's day; returns what was
        charged and held before it (module docstring). Raises StoreUnavailable."""
        self._write(principal, day, turn, charge=micros, holding=True, calls=0)
        # The total first, then the holds: a hold the total saw is taken out of it (by
        # its creation time against the total's read time) and counted only if it came
        # before this one; a turn settled in between stays in the total at its hold
        # (conservative); a hold created after the total came after this one.
        total, read_at = self._total(principal, day)
        holds = [(key, m) for key, m in self._holds(principal, day) if key[0] <= read_at]
        mine = next((key for key, _ in holds if key[1] == turn), None)
        before = sum(m for key, m in holds if key[1] != turn and (mine is None or key < mine))
        return DaySpend(total - sum(m for _, m in holds), before)

    def settle(self, principal: str, day: dt.date, turn: str, cost_micros: int, calls: int) -> None:
        """Turn ``turn`` ended: its hold goes, its charge stays; raises StoreUnavailable."""
        self._write(principal, day, turn, charge=cost_micros, holding=False, calls=calls)

    def _turns(self, principal: str, day: dt.date) -> firestore.CollectionReference:
        turns: firestore.CollectionReference = (
            self._client.collection(SPEND)
            .document(f"{principal_hash(principal)}_{day_key(day)}")
            .collection(SPEND_TURNS)
        )
        return turns

    def _total(self, principal: str, day: dt.date) -> tuple[int, dt.datetime]:
        """The day's sum of charges and holds, and the time it was read at."""
        # Typed as returning a class (the library's annotation is wrong): an instance.
        aggregate: Any = self._turns(principal, day).sum(CHARGE_MICROS, alias=CHARGE_MICROS)
        with outage_as_unavailable():
            rows = aggregate.get(retry=self._retry, timeout=self._timeout)
        [[result]] = rows
        # An empty sum comes back as 0.0: the field itself is an integer.
        return int(result.value or 0), result.read_time

    def _holds(self, principal: str, day: dt.date) -> list[tuple[tuple[dt.datetime, str], int]]:
        """The holds in place: ((creation time, turn), micros) each."""
        query = (
            self._turns(principal, day)
            .where(filter=FieldFilter(HOLDING, "==", True))
            .select([CHARGE_MICROS])
        )
        with outage_as_unavailable():
            snaps = list(query.stream(retry=self._retry, timeout=self._timeout))
        return [
            ((snap.create_time, snap.id), int((snap.to_dict() or {}).get(CHARGE_MICROS) or 0))
            for snap in snaps
        ]

    def _write(
        self, principal: str, day: dt.date, turn: str, *, charge: int, holding: bool, calls: int
    ) -> None:
        doc: dict[str, Any] = {
            OWNER: principal,
            DAY: day_key(day),
            CHARGE_MICROS: charge,
            HOLDING: holding,
            CALLS: calls,
            TTL_FIELD: expiry_of(day),
        }
        with outage_as_unavailable():
            self._turns(principal, day).document(turn).set(
                doc, retry=self._retry, timeout=self._timeout
            )


def principal_hash(principal: str) -> str:
    # Principals are emails or key names: hashed, the id has a fixed length and no
    # character Firestore refuses in an id.
    return hashlib.sha256(principal.encode("utf-8", "surrogateescape")).hexdigest()
