"""The run store's writes under a lying network: a fault proxy between the Firestore run
store and the emulator loses a write's reply (the write landed), holds it past the
timeout, or holds the request itself until after the retry. Whatever happens, a run is
created once (a retried create finds it; the session's queue holds it once) and a
checkpoint's events are logged once (a retry finds the step landed under its token; a
late write arriving after the retry is refused by its stale precondition)."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import cast

import pytest
from google.cloud import firestore as fs

from agent.base.clock import utc_now
from agent.store.calls import StoreUnavailable
from agent.store.history import doc_id
from agent.store.run_records import NewEvent, Run, RunInFlight
from agent.store.runs import RunStore
from agent.store.schema import QUEUE, SESSION_RUNS
from tests.support.fault_proxy import Action, FaultProxy

TIMEOUT = 1.0
SECOND = dt.timedelta(seconds=1)


@pytest.fixture
def stores(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> tuple[RunStore, RunStore]:
    """A run store behind the proxy, and one that talks to the emulator directly."""
    with monkeypatch.context() as patch:  # the client reads the host when it is made
        patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.host)
        behind = RunStore(fs.Client(), timeout_seconds=TIMEOUT)
    return behind, RunStore(fs.Client(), timeout_seconds=5)


def new_run(session_id: str) -> Run:
    now = utc_now()
    return Run(
        run_id="r" + secrets.token_hex(6),
        session_id=session_id,
        owner="alice",
        status="queued",
        created_at=now,
        updated_at=now,
        expire_at=now + 3600 * SECOND,
        deadline=now + 600 * SECOND,
        request={"message": "hello"},
    )


def queued_ids(session_id: str) -> list[str]:
    snap = fs.Client().collection(SESSION_RUNS).document(doc_id(session_id)).get()
    return [entry["run_id"] for entry in (snap.to_dict() or {}).get(QUEUE, [])]


def seqs(store: RunStore, run_id: str) -> list[tuple[int, str]]:
    return [(e.seq, e.data.get("text", "")) for e in store.events(run_id, 0, 1000)]


@pytest.mark.parametrize("fault", ["reset", "hold_reply"])
def test_a_create_whose_reply_is_lost_or_late_stores_one_run(
    stores: tuple[RunStore, RunStore], proxy: FaultProxy, fault: str
) -> None:
    behind, direct = stores
    run = new_run("s-" + secrets.token_hex(4))
    first = [NewEvent(type="status", data={"status": "queued"})]
    proxy.arm_write(0, cast(Action, fault), seconds=2 * TIMEOUT)
    try:
        created: Run | None = behind.create(run, first, enqueue=False)
    except StoreUnavailable:  # the late reply: the caller is told 503 ...
        created = None
    if fault == "hold_reply":
        time.sleep(2 * TIMEOUT)  # the held replies block the proxied channel until then
    # ... and retries: the same run, found, not a second one.
    again = behind.create(run, first, enqueue=False)
    if created is not None:
        assert again == created
    assert again.run_id == run.run_id and again.seq == 1
    assert direct.get(run.run_id, utc_now()) == again
    assert seqs(direct, run.run_id) == [(1, "")]
    assert queued_ids(run.session_id) == [run.run_id]  # in its session's queue once
    with pytest.raises(RunInFlight):
        direct.create(new_run(run.session_id), [], enqueue=False)
    assert proxy.writes, "the create's write went through the proxy"


@pytest.mark.parametrize("fault", ["reset", "hold_reply"])
def test_a_checkpoint_whose_reply_is_lost_or_late_logs_its_events_once(
    stores: tuple[RunStore, RunStore], proxy: FaultProxy, fault: str
) -> None:
    behind, direct = stores
    run = direct.create(new_run("s-" + secrets.token_hex(4)), [], enqueue=False)
    token = secrets.token_hex(8)
    now = utc_now()
    direct.take(run.run_id, 0, token, now, now + 60 * SECOND)  # seq 1: running
    events = [NewEvent(type="delta", data={"text": t}) for t in ("a", "b")]

    def checkpoint() -> Run:
        return behind.checkpoint(
            run.run_id, token, utc_now(), step=1, state=b"s1", usage={"requests": 1}, events=events
        )

    proxy.arm_write(0, cast(Action, fault), seconds=2 * TIMEOUT)
    try:
        kept: Run | None = checkpoint()
    except StoreUnavailable:
        kept = None
    if fault == "hold_reply":
        time.sleep(2 * TIMEOUT)
    again = checkpoint()  # the worker's retry (or the task's next delivery)
    if kept is not None:
        assert again == kept
    assert (again.step, again.seq, again.state) == (1, 3, b"s1")
    assert seqs(direct, run.run_id) == [(1, ""), (2, "a"), (3, "b")]


def test_a_checkpoint_that_arrives_after_its_retry_is_refused(
    stores: tuple[RunStore, RunStore], proxy: FaultProxy
) -> None:
    behind, direct = stores
    run = direct.create(new_run("s-" + secrets.token_hex(4)), [], enqueue=False)
    token = secrets.token_hex(8)
    now = utc_now()
    direct.take(run.run_id, 0, token, now, now + 60 * SECOND)
    events = [NewEvent(type="delta", data={"text": "x"})]
    held = proxy.arm_write(0, "hold_request", seconds=4 * TIMEOUT)
    with pytest.raises(StoreUnavailable):  # nothing answered in time
        behind.checkpoint(run.run_id, token, now, step=1, state=b"1", usage={}, events=events)
    assert held.fired.is_set()
    # The worker retries on another connection (gRPC shares one per target, and the
    # proxy's is held: this one goes direct), the step done again said "y"; it lands
    # first ...
    redone = [NewEvent(type="delta", data={"text": "y"})]
    landed = direct.checkpoint(run.run_id, token, now, step=1, state=b"2", usage={}, events=redone)
    assert landed.seq == 2
    # ... then the held write arrives: its precondition is stale, it is refused.
    time.sleep(held.fired_at + 4 * TIMEOUT + 1 - time.monotonic())
    assert seqs(direct, run.run_id) == [(1, ""), (2, "y")]
    stored = direct.get(run.run_id, utc_now())
    assert stored is not None and (stored.step, stored.seq, stored.state) == (1, 2, b"2")
