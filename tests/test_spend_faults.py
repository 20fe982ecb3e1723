"""The spend's own writes under a lying network: a fault proxy between the spend store
and the Firestore emulator loses a reply, holds one past the timeout, or holds a request
until it is cut. Each turn's hold and charge are one document written whole, so a retry
writes the same thing again: never a double charge; a charge that never lands leaves the
turn charged its reservation, never less."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Callable
from typing import cast

import pytest
from google.cloud import firestore as fs

from agent.store.spend import DaySpend, SpendStore
from agent.turn.budget import Budget
from tests.support.fault_proxy import Action, FaultProxy

DAY = dt.datetime(2031, 5, 6, 12, tzinfo=dt.UTC)
TIMEOUT = 1.0


@pytest.fixture
def stores(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> tuple[Budget, SpendStore, SpendStore]:
    """A budget ($1, $0.5 held per turn) over a spend store behind the proxy, that store,
    and one that reads the emulator directly."""
    direct = SpendStore(fs.Client(), timeout_seconds=5)
    with monkeypatch.context() as patch:  # the client reads the host when it is made
        patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
        behind = SpendStore(fs.Client(), timeout_seconds=TIMEOUT)
    return Budget(behind, 1.0, lambda: DAY, reserve_usd=0.5), behind, direct


def eventually(get: Callable[[], DaySpend], expected: DaySpend) -> DaySpend:
    """What ``get`` reads once it is ``expected`` (a held write lands late) or time is up."""
    until = time.monotonic() + 5 + 2 * TIMEOUT
    while True:
        seen = get()
        if seen == expected or time.monotonic() > until:
            return seen
        time.sleep(0.1)


@pytest.mark.parametrize("fault", ["reset", "hold_reply"])
def test_a_charge_whose_reply_is_lost_or_late_is_written_once(
    stores: tuple[Budget, SpendStore, SpendStore], proxy: FaultProxy, fault: str
) -> None:
    budget, _, direct = stores
    hold = budget.admit("alice")
    assert direct.charged("alice", DAY.date()) == DaySpend(0, 500_000)
    # The turn id is in the document's path: the charge's write is the next request
    # that carries it.
    proxy.arm(hold.turn, cast(Action, fault), seconds=2 * TIMEOUT)
    budget.settle(hold, 123_457, 3)
    seen = eventually(lambda: direct.charged("alice", DAY.date()), DaySpend(123_457, 0))
    assert seen == DaySpend(123_457, 0)  # charged once, the hold gone
    time.sleep(2 * TIMEOUT)  # the held replies block the proxied channel until then
    # The next turn is admitted against exactly that.
    assert budget.admit("alice").micros == 500_000


@pytest.mark.parametrize("fault", ["reset", "hold_reply"])
def test_a_hold_whose_reply_is_lost_or_late_is_one_hold(
    stores: tuple[Budget, SpendStore, SpendStore], proxy: FaultProxy, fault: str
) -> None:
    _, behind, direct = stores
    turn = "t" + secrets.token_hex(6)
    proxy.arm(turn, cast(Action, fault), seconds=2 * TIMEOUT)
    try:
        before = behind.hold("alice", DAY.date(), turn, 500_000)
    except Exception:  # the late reply: the caller's turn is refused (503) ...
        before = None
    # ... and the write landed once either way: one hold, not two.
    seen = eventually(lambda: direct.charged("alice", DAY.date()), DaySpend(0, 500_000))
    assert seen == DaySpend(0, 500_000)
    if before is not None:
        assert before == DaySpend()
    time.sleep(2 * TIMEOUT)  # the held replies block the proxied channel until then
    behind.settle("alice", DAY.date(), turn, 0, 0)
    assert direct.charged("alice", DAY.date()) == DaySpend()


def test_a_charge_that_never_lands_leaves_the_turn_charged_its_reservation(
    stores: tuple[Budget, SpendStore, SpendStore], proxy: FaultProxy
) -> None:
    budget, _, direct = stores
    hold = budget.admit("alice")
    proxy.arm(hold.turn, "hold_request", seconds=6 * TIMEOUT, then="cut")
    budget.settle(hold, 1_000, 1)  # gives up after its timeout, logs, does not raise
    assert direct.charged("alice", DAY.date()) == DaySpend(0, 500_000)  # never less
    time.sleep(6 * TIMEOUT + 0.5)  # the held request was cut: it never arrives
    assert direct.charged("alice", DAY.date()) == DaySpend(0, 500_000)
