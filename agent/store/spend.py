"""What each principal spent on the model per UTC day, in Firestore: ``SpendStore``.

Why it exists: ``BUDGET_USD_PER_PRINCIPAL_PER_DAY`` (``agent/turn/budget.py``) needs a
principal's spend today before each turn, and every turn of that principal adds to it.
One document per principal and day would be a hot document: Firestore sustains about one
write per second to a document, and one principal's concurrent turns (a batch job, a
client in a loop) write far faster. So the counter is sharded.

Layout
------
::

    agent_spend/{sha256(principal)}_{YYYY-MM-DD}_{shard}     shard 0..SHARDS-1
        owner     str        the principal
        day       str        the UTC day, YYYY-MM-DD
        cost_usd  float      dollars of the committed turns that drew this shard
        expire_at Timestamp  TTL field: EXPIRE_DAYS after the day ends

Each turn draws one shard at random and adds its cost with ``firestore.Increment`` in
``set(..., merge=True)`` (the first turn of the day creates the shard). A day's spend is
the sum over its shards: reading it is one ``get_all`` of SHARDS documents (one round
trip; count SHARDS document reads), paid once per turn when a budget is set, and
nothing when none is.

Size bounds
-----------
A shard holds four fields: well under a kilobyte. A principal has at most SHARDS
documents per day, and each goes EXPIRE_DAYS after its day ended (TTL deletion is lazy:
typically within a day more).

Consistency
-----------
* A turn's increment is a write of the turn's own commit (``recording`` returns it for
  ``extra_writes``): the spend lands if and only if the turn does. An increment is a
  field transform applied by the server, not a read-modify-write, so concurrent turns
  never lose each other's cost and never conflict; spread over SHARDS documents, one
  principal's turns stay under Firestore's sustained write rate per document up to
  about SHARDS turns per second.
* ``spent`` reads every shard at once: a strongly consistent snapshot that includes
  every commit that landed before it.
* The budget is checked before a turn's model call and its spend recorded at commit,
  so a principal can overshoot: by at most the cost of the turns already running when
  the budget was reached (each passed its check before the others committed). Turns
  that fail after calling the model (a timeout, a lost claim, a commit that failed)
  record nothing, though the provider may charge for them: a known limitation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from typing import Any

from google.cloud import firestore

from agent.store.calls import bounded_retry, outage_as_unavailable
from agent.store.schema import COST_USD, DAY, OWNER, SPEND, TTL_FIELD

SHARDS = 8
"""Shards per principal and day: the read cost of a budget check, and (about) the
turns per second one principal can commit before a shard gets hot."""
EXPIRE_DAYS = 2
"""How long a day's shards are kept after the day ends: the budget needs only today's."""


def day_key(day: dt.date) -> str:
    return day.isoformat()


def expiry_of(day: dt.date) -> dt.datetime:
    """When a day's spend may go: EXPIRE_DAYS after the day ends (UTC)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start + dt.timedelta(days=1 + EXPIRE_DAYS)


class SpendStore:
    """Reads and records principals' daily spend. Thread-safe; calls are synchronous."""

    def __init__(self, client: firestore.Client, *, timeout_seconds: float) -> None:
        self._client = client
        self._timeout = timeout_seconds
        self._retry = bounded_retry(timeout_seconds)

    def spent(self, principal: str, day: dt.date) -> float:
        """US dollars the principal's committed turns of ``day`` cost; raises
        StoreUnavailable."""
        refs = [self._ref(principal, day, shard) for shard in range(SHARDS)]
        with outage_as_unavailable():
            snaps = self._client.get_all(refs, retry=self._retry, timeout=self._timeout)
            total = 0.0
            for snap in snaps:
                if snap.exists:
                    total += float((snap.to_dict() or {}).get(COST_USD) or 0.0)
        return round(total, 8)

    def recording(self, principal: str, day: dt.date, cost_usd: float) -> Callable[[Any], None]:
        """The write that adds ``cost_usd`` to the principal's spend of ``day``, for the
        turn's own commit (``batch`` is the commit's WriteBatch)."""
        ref = self._ref(principal, day, random.randrange(SHARDS))

        def write(batch: Any) -> None:
            shard: dict[str, Any] = {
                OWNER: principal,
                DAY: day_key(day),
                COST_USD: firestore.Increment(cost_usd),
                TTL_FIELD: expiry_of(day),
            }
            batch.set(ref, shard, merge=True)

        return write

    def _ref(self, principal: str, day: dt.date, shard: int) -> firestore.DocumentReference:
        ref: firestore.DocumentReference = self._client.collection(SPEND).document(
            f"{_principal_hash(principal)}_{day_key(day)}_{shard}"
        )
        return ref


def _principal_hash(principal: str) -> str:
    # Principals are emails or key names: hashed, the id has a fixed length and no
    # character Firestore refuses in an id.
    return hashlib.sha256(principal.encode("utf-8", "surrogateescape")).hexdigest()
