"""The run store's interface (``RunBackend`` in ``agent/store/backend.py``), one contract
for both backends: Firestore on the real emulator (skipped where it is not installed)
and SQLite (always). Each test checks a promise of ``run_records.py``'s header (what
each operation does exactly: ``run_rules.py``): an idempotent create that keeps one run
in flight per session and queues the rest first in first out, the lease (take, renew,
held, a step done, a run ended), a checkpoint that keeps its events and its state
together under the lease and never twice, end handing the session to the next run,
cancel and resume, the event log read after any point without a gap, the bounds and
expiry; and ``HistoryBackend.reclaim``, by which a run's later slices take up the
session claim it holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.base.clock import utc_now
from agent.store.backend import HistoryBackend, RunBackend
from agent.store.history import ClaimLost
from agent.store.run_records import (
    LeaseHeld,
    LeaseLost,
    NewEvent,
    NotPaused,
    Run,
    RunFinished,
    RunInFlight,
    RunTooLarge,
    StepDone,
)
from agent.store.run_rules import (
    MAX_EVENT_BYTES,
    MAX_EVENTS_PER_WRITE,
    MAX_RECORD_BYTES,
    MAX_STATE_BYTES,
)

SECOND = dt.timedelta(seconds=1)
TTL = 600


@dataclass
class Stores:
    runs: RunBackend
    history: HistoryBackend


@pytest.fixture(params=["firestore", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "firestore":
        from google.cloud import firestore as fs

        from agent.store.history import HistoryStore
        from agent.store.runs import RunStore

        request.getfixturevalue("firestore")  # the emulator, wiped; skips where absent
        client = fs.Client()
        yield Stores(
            RunStore(client, timeout_seconds=3),
            HistoryStore(client, ttl_seconds=TTL, timeout_seconds=3),
        )
        return
    from agent.store.sqlite_db import Database
    from agent.store.sqlite_history import SqliteHistoryStore
    from agent.store.sqlite_runs import SqliteRunStore

    database = Database(str(tmp_path / "history.sqlite3"), timeout_seconds=3)
    yield Stores(SqliteRunStore(database), SqliteHistoryStore(database, ttl_seconds=TTL))
    database.close()


def new_run(
    session_id: str = "s",
    *,
    now: dt.datetime | None = None,
    owner: str | None = "alice",
    run_id: str | None = None,
    max_seconds: int = 3600,
) -> Run:
    now = now or utc_now()
    return Run(
        run_id=run_id or "r" + secrets.token_hex(6),
        session_id=session_id,
        owner=owner,
        status="queued",
        created_at=now,
        updated_at=now,
        expire_at=now + (max_seconds + TTL) * SECOND,
        deadline=now + max_seconds * SECOND,
        request={"message": "hello", "nested": [[1, 2], {"a": None}]},
    )


def status(value: str) -> NewEvent:
    return NewEvent(type="status", data={"status": value})


def delta(text: str) -> NewEvent:
    return NewEvent(type="delta", data={"text": text})


def log_of(stores: Stores, run_id: str, after: int = 0) -> list[tuple[int, str, Any]]:
    return [(e.seq, e.type, e.data) for e in stores.runs.events(run_id, after, 10_000)]


def started(stores: Stores, session_id: str = "s", **kwargs: Any) -> tuple[Run, str]:
    """A run created and taken at step 0; its lease token."""
    run = stores.runs.create(new_run(session_id, **kwargs), [status("queued")], enqueue=False)
    token = secrets.token_hex(8)
    now = utc_now()
    return stores.runs.take(run.run_id, 0, token, now, now + 60 * SECOND), token


# -- create ----------------------------------------------------------------------------


def test_create_stores_the_run_and_its_first_events_and_a_retry_finds_it(stores: Stores) -> None:
    run = new_run()
    created = stores.runs.create(run, [status("queued")], enqueue=False)
    assert created.seq == 1 and created.after is None and created.status == "queued"
    got = stores.runs.get(run.run_id, utc_now())
    assert got is not None
    assert got == dataclasses.replace(run, seq=1)  # every field round-trips
    # The same create again (its first reply lost): the stored run, nothing added.
    again = stores.runs.create(run, [status("queued")], enqueue=False)
    assert again == got
    assert log_of(stores, run.run_id) == [(1, "status", {"status": "queued"})]


def test_one_run_in_flight_per_session_and_the_rest_queue_first_in_first_out(
    stores: Stores,
) -> None:
    a = stores.runs.create(new_run(), [status("queued")], enqueue=False)
    with pytest.raises(RunInFlight):
        stores.runs.create(new_run(), [status("queued")], enqueue=False)
    b = stores.runs.create(new_run(), [status("queued")], enqueue=True)
    c = stores.runs.create(new_run(), [status("queued")], enqueue=True)
    assert (b.after, c.after) == (a.run_id, b.run_id)
    other = stores.runs.create(new_run("t"), [], enqueue=False)  # another session: free
    assert other.after is None
    # A run ending hands the session to the next, in order; the last hands it to none.
    token = secrets.token_hex(8)
    now = utc_now()
    stores.runs.take(a.run_id, 0, token, now, now + 60 * SECOND)
    ended, following = stores.runs.end(a.run_id, token, now, status="completed", events=[])
    assert ended.status == "completed" and ended.next_run == b.run_id
    assert following is not None and following.run_id == b.run_id
    with pytest.raises(RunInFlight):  # b is in flight now, c waits
        stores.runs.create(new_run(), [], enqueue=False)
    _, following = stores.runs.end(b.run_id, None, now, status="cancelled", events=[])
    assert following is not None and following.run_id == c.run_id
    _, following = stores.runs.end(c.run_id, None, now, status="failed", events=[])
    assert following is None
    free = stores.runs.create(new_run(), [], enqueue=False)  # nothing in flight
    assert free.after is None


def test_a_queued_run_ended_behind_another_hands_nothing_on(stores: Stores) -> None:
    a, token = started(stores)
    b = stores.runs.create(new_run(), [], enqueue=True)
    c = stores.runs.create(new_run(), [], enqueue=True)
    now = utc_now()
    # b cancelled while a runs: c must not start now.
    _, following = stores.runs.end(b.run_id, None, now, status="cancelled", events=[])
    assert following is None
    _, following = stores.runs.end(a.run_id, token, now, status="completed", events=[])
    assert following is not None and following.run_id == c.run_id


def test_a_session_whose_runs_are_all_past_their_deadline_is_free(stores: Stores) -> None:
    past = utc_now() - 100 * SECOND
    stores.runs.create(new_run(now=past, max_seconds=10), [], enqueue=False)
    fresh = stores.runs.create(new_run(), [], enqueue=False)
    assert fresh.after is None


def test_racing_creates_on_one_session_admit_exactly_one(stores: Stores) -> None:
    start = threading.Barrier(4)

    def race(_: int) -> str:
        start.wait()
        try:
            stores.runs.create(new_run("race"), [], enqueue=False)
        except RunInFlight:
            return "busy"
        return "won"

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(race, range(4))) == ["busy"] * 3 + ["won"]


# -- the lease ---------------------------------------------------------------------------


def test_take_leases_renews_and_refuses_while_held(stores: Stores) -> None:
    run = stores.runs.create(new_run(), [status("queued")], enqueue=False)
    now = utc_now()
    taken = stores.runs.take(run.run_id, 0, "t1", now, now + 30 * SECOND)
    assert (taken.status, taken.lease, taken.lease_until) == ("running", "t1", now + 30 * SECOND)
    # queued -> running is a status change: the store logs it.
    assert log_of(stores, run.run_id) == [
        (1, "status", {"status": "queued"}),
        (2, "status", {"status": "running"}),
    ]
    renewed = stores.runs.take(run.run_id, 0, "t1", now + SECOND, now + 90 * SECOND)
    assert renewed.lease_until == now + 90 * SECOND and renewed.seq == 2  # no new event
    with pytest.raises(LeaseHeld) as held:
        stores.runs.take(run.run_id, 0, "t2", now + 2 * SECOND, now + 60 * SECOND)
    assert 1 <= held.value.retry_after <= 5
    # The lease lapsed: another worker takes the run over.
    later = now + 91 * SECOND
    over = stores.runs.take(run.run_id, 0, "t2", later, later + 30 * SECOND)
    assert over.lease == "t2"
    with pytest.raises(LeaseLost):  # the old worker's checkpoint is not kept
        stores.runs.checkpoint(
            run.run_id, "t1", later, step=1, state=b"x", usage={}, events=[delta("lost")]
        )
    assert stores.runs.events(run.run_id, 2, 100) == []


def test_take_of_a_done_step_a_finished_run_or_a_paused_run_does_nothing(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    stores.runs.checkpoint(run.run_id, token, now, step=1, state=b"s1", usage={}, events=[])
    with pytest.raises(StepDone):  # a duplicate delivery of step 0
        stores.runs.take(run.run_id, 0, "dup", now, now + 60 * SECOND)
    with pytest.raises(LeaseLost):  # a step the run has not reached
        stores.runs.take(run.run_id, 5, token, now, now + 60 * SECOND)
    stores.runs.end(run.run_id, token, now, status="approval_required", events=[], pending={})
    with pytest.raises(StepDone):  # waits for a decision
        stores.runs.take(run.run_id, 1, "t", now, now + 60 * SECOND)
    stores.runs.end(run.run_id, None, now, status="cancelled", events=[])
    with pytest.raises(RunFinished):
        stores.runs.take(run.run_id, 1, "t", now, now + 60 * SECOND)
    with pytest.raises(RunFinished):
        stores.runs.take("absent", 0, "t", now, now + 60 * SECOND)


# -- checkpoints ---------------------------------------------------------------------------


def test_a_checkpoint_keeps_state_usage_and_events_together_once(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    kept = stores.runs.checkpoint(
        run.run_id,
        token,
        now,
        step=1,
        state=b"state-1",
        usage={"requests": 1},
        events=[delta("Hel"), NewEvent(type="tool_call", data={"name": "t"})],
        claim_token="claim",
        generation="gen",
    )
    assert (kept.step, kept.state, kept.usage, kept.seq) == (1, b"state-1", {"requests": 1}, 4)
    assert (kept.claim_token, kept.generation) == ("claim", "gen")
    # The same checkpoint again (its reply was lost, the worker retries): not twice.
    again = stores.runs.checkpoint(
        run.run_id, token, now, step=1, state=b"state-1", usage={}, events=[delta("Hel")]
    )
    assert again.seq == 4 and again.step == 1
    stores.runs.checkpoint(
        run.run_id,
        token,
        now,
        step=2,
        state=b"state-2",
        usage={"requests": 2},
        events=[delta("lo")],
    )
    assert [e[0] for e in log_of(stores, run.run_id)] == [1, 2, 3, 4, 5]
    stored = stores.runs.get(run.run_id, now)
    assert stored is not None and (stored.step, stored.state, stored.seq) == (2, b"state-2", 5)
    assert stored.claim_token == "claim"  # kept when a later checkpoint does not say


def test_a_checkpoint_past_the_lease_or_over_the_bounds_writes_nothing(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    before = stores.runs.get(run.run_id, now)
    with pytest.raises(LeaseLost):
        stores.runs.checkpoint(run.run_id, "other", now, step=1, state=b"", usage={}, events=[])
    with pytest.raises(LeaseLost):  # its own lease, lapsed
        stores.runs.checkpoint(
            run.run_id, token, now + 61 * SECOND, step=1, state=b"", usage={}, events=[]
        )
    too_big = NewEvent(type="delta", data={"text": "x" * MAX_EVENT_BYTES})
    with pytest.raises(RunTooLarge):
        stores.runs.checkpoint(
            run.run_id, token, now, step=1, state=b"", usage={}, events=[delta("a"), too_big]
        )
    with pytest.raises(RunTooLarge):
        many = [delta("a")] * (MAX_EVENTS_PER_WRITE + 1)
        stores.runs.checkpoint(run.run_id, token, now, step=1, state=b"", usage={}, events=many)
    with pytest.raises(RunTooLarge):
        big_state = b"s" * (MAX_STATE_BYTES + 1)
        stores.runs.checkpoint(
            run.run_id, token, now, step=1, state=big_state, usage={}, events=[delta("a")]
        )
    assert stores.runs.get(run.run_id, now) == before
    assert [e[0] for e in log_of(stores, run.run_id)] == [1, 2]


def test_a_large_state_round_trips_and_shrinks_again(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    large = os.urandom(MAX_STATE_BYTES - 1)  # incompressible: several documents on Firestore
    stores.runs.checkpoint(run.run_id, token, now, step=1, state=large, usage={}, events=[])
    stored = stores.runs.get(run.run_id, now)
    assert stored is not None and stored.state == large
    renewed = stores.runs.take(run.run_id, 1, token, now, now + 60 * SECOND)
    assert renewed.state == large
    stores.runs.checkpoint(run.run_id, token, now, step=2, state=b"small", usage={}, events=[])
    stored = stores.runs.get(run.run_id, now)
    assert stored is not None and stored.state == b"small"
    stores.runs.checkpoint(run.run_id, token, now, step=3, state=None, usage={}, events=[])
    stored = stores.runs.get(run.run_id, now)
    assert stored is not None and stored.state is None


def test_a_checkpoint_returns_the_cancel_request(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    assert stores.runs.cancel(run.run_id, "rollback", now).cancel == "rollback"
    assert stores.runs.cancel(run.run_id, "interrupt", now).cancel == "rollback"  # first counts
    kept = stores.runs.checkpoint(run.run_id, token, now, step=1, state=b"", usage={}, events=[])
    assert kept.cancel == "rollback"
    stores.runs.end(run.run_id, token, now, status="cancelled", events=[status("cancelled")])
    with pytest.raises(RunFinished):
        stores.runs.cancel(run.run_id, "interrupt", now)
    with pytest.raises(RunFinished):
        stores.runs.checkpoint(run.run_id, token, now, step=2, state=b"", usage={}, events=[])


# -- end, resume ------------------------------------------------------------------------------


def test_end_is_under_the_lease_and_a_repeated_end_adds_nothing(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    with pytest.raises(LeaseLost):
        stores.runs.end(run.run_id, "other", now, status="completed", events=[])
    with pytest.raises(LeaseHeld):  # nobody's end while a worker holds the lease
        stores.runs.end(run.run_id, None, now, status="cancelled", events=[])
    body = {"reply": "hi", "usage": {"requests": 1}}
    final = [NewEvent(type="done", data=body), status("completed")]
    ended, following = stores.runs.end(
        run.run_id, token, now, status="completed", events=final, response=body, usage={"r": 1}
    )
    assert (ended.status, ended.response, ended.usage, ended.lease) == (
        "completed",
        body,
        {"r": 1},
        None,
    )
    assert following is None and ended.seq == 4
    again, following = stores.runs.end(run.run_id, token, now, status="completed", events=final)
    assert again == ended and following is None
    assert [e[0] for e in log_of(stores, run.run_id)] == [1, 2, 3, 4]
    with pytest.raises(RunFinished):
        stores.runs.end(run.run_id, token, now, status="failed", events=[])
    got = stores.runs.get(run.run_id, now)
    assert got == ended


def test_a_paused_run_is_resumed_with_its_decisions(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    with pytest.raises(NotPaused):
        stores.runs.resume(run.run_id, {"call_1": True}, now)
    pending = {"pause_id": "p", "pending_approvals": [{"call_id": "call_1"}]}
    paused, following = stores.runs.end(
        run.run_id,
        token,
        now,
        status="approval_required",
        events=[status("approval_required")],
        pending=pending,
    )
    assert paused.status == "approval_required" and paused.pending == pending
    assert following is None and paused.lease is None
    with pytest.raises(RunInFlight):  # a paused run is still in flight
        stores.runs.create(new_run(), [], enqueue=False)
    resumed = stores.runs.resume(run.run_id, {"call_1": True}, now)
    assert resumed.status == "queued" and resumed.pending is None
    assert resumed.request["resume"] == {"call_1": True}
    assert resumed.request["message"] == "hello"
    assert stores.runs.resume(run.run_id, {"call_1": True}, now) == resumed  # repeated
    assert log_of(stores, run.run_id)[-2:] == [
        (3, "status", {"status": "approval_required"}),
        (4, "status", {"status": "queued"}),
    ]
    again = stores.runs.take(run.run_id, 0, "t2", now, now + 60 * SECOND)
    assert again.status == "running" and again.seq == 5
    stores.runs.end(run.run_id, "t2", now, status="failed", events=[], error={"code": "x"})
    with pytest.raises(RunFinished):
        stores.runs.resume(run.run_id, {"call_1": True}, now)


# -- the event log, owners, expiry, bounds ---------------------------------------------------


def test_events_after_any_point_in_order_without_a_gap(stores: Stores) -> None:
    run, token = started(stores)
    now = utc_now()
    for step in range(1, 6):
        events = [delta(f"{step}.{n}") for n in range(step)]
        stores.runs.checkpoint(
            run.run_id, token, now, step=step, state=b"", usage={}, events=events
        )
    everything = log_of(stores, run.run_id)
    assert [e[0] for e in everything] == list(range(1, 18))
    for after in range(0, 18):
        assert log_of(stores, run.run_id, after) == everything[after:]
        page = stores.runs.events(run.run_id, after, 3)
        assert [e.seq for e in page] == list(range(after + 1, min(after + 3, 17) + 1))
    assert stores.runs.events(run.run_id, 17, 10) == []
    assert stores.runs.events("absent", 0, 10) == []


def test_a_run_is_its_owners_and_expires_with_its_events(stores: Stores) -> None:
    past = utc_now() - 30 * SECOND
    run = new_run(now=past, owner="alice")
    run = dataclasses.replace(run, expire_at=past + 20 * SECOND, deadline=past + 10 * SECOND)
    stores.runs.create(run, [status("queued")], enqueue=False)
    assert stores.runs.get(run.run_id, past, "alice") is not None
    assert stores.runs.get(run.run_id, past, "bob") is None
    assert stores.runs.get(run.run_id, past) is not None  # no owner given: the service's read
    now = utc_now()
    assert stores.runs.get(run.run_id, now) is None
    assert stores.runs.events(run.run_id, 0, 10) == []
    with pytest.raises(RunFinished):
        stores.runs.take(run.run_id, 0, "t", now, now + 60 * SECOND)
    with pytest.raises(RunFinished):
        stores.runs.cancel(run.run_id, "interrupt", now)


def test_a_record_over_its_bound_is_refused_and_nothing_is_written(stores: Stores) -> None:
    huge = new_run()
    huge = dataclasses.replace(huge, request={"message": "x" * (MAX_RECORD_BYTES + 1)})
    with pytest.raises(RunTooLarge):
        stores.runs.create(huge, [], enqueue=False)
    assert stores.runs.get(huge.run_id, utc_now()) is None
    run, token = started(stores)
    with pytest.raises(RunTooLarge):
        stores.runs.end(
            run.run_id,
            token,
            utc_now(),
            status="completed",
            events=[],
            response={"reply": "x" * (MAX_RECORD_BYTES + 1)},
        )
    got = stores.runs.get(run.run_id, utc_now())
    assert got is not None and got.status == "running"


# -- reclaim -------------------------------------------------------------------------------


def test_reclaim_takes_up_a_claim_the_token_still_holds(stores: Stores) -> None:
    now = utc_now()
    first = stores.history.claim("s", now, now + 60 * SECOND, "alice")
    stores.history.commit(first, [{"role": "user", "content": "one"}], now)
    claim = stores.history.claim("s", now, now + 60 * SECOND, "alice")
    again = stores.history.reclaim("s", claim.token, now + SECOND, "alice")
    assert (again.token, again.generation, again.until) == (
        claim.token,
        claim.generation,
        claim.until,
    )
    assert again.history == claim.history and again.turns == claim.turns
    assert not again.new_session and not again.replaced
    # Its commit is the claim's: it lands, and releases the session.
    stores.history.commit(again, [{"role": "user", "content": "two"}], now + SECOND)
    loaded = stores.history.load("s", now + SECOND, "alice")
    assert loaded is not None and [i["content"] for i in loaded.items] == ["one", "two"]
    with pytest.raises(ClaimLost):  # released by the commit
        stores.history.reclaim("s", claim.token, now + 2 * SECOND, "alice")


def test_reclaim_of_a_first_turn_and_of_a_lost_claim(stores: Stores) -> None:
    now = utc_now()
    claim = stores.history.claim("new", now, now + 60 * SECOND, "alice")
    again = stores.history.reclaim("new", claim.token, now, "alice")
    assert again.new_session and again.history == [] and again.generation == claim.generation
    with pytest.raises(ClaimLost):
        stores.history.reclaim("new", "not-the-token", now, "alice")
    with pytest.raises(ClaimLost):
        stores.history.reclaim("new", claim.token, now, "bob")
    with pytest.raises(ClaimLost):
        stores.history.reclaim("absent", claim.token, now, "alice")
    stores.history.commit(again, [{"role": "user", "content": "first"}], now)
    loaded = stores.history.load("new", now, "alice")
    assert loaded is not None and loaded.turns == 1
    # A lapsed claim is lost even when nobody took the session since.
    short = stores.history.claim("new", now, now + 5 * SECOND, "alice")
    with pytest.raises(ClaimLost):
        stores.history.reclaim("new", short.token, now + 6 * SECOND, "alice")
