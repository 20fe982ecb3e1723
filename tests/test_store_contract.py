"""The store's interface (``agent/store/backend.py``), one contract for both backends:
Firestore on the real emulator (skipped where it is not installed) and SQLite (always).

Each test gets a fresh store of each kind and checks a promise the turn and the routes
rely on: claims refuse concurrent turns at once and lapse at their deadline, a commit is
all or nothing and conditioned on its claim, expired sessions read as absent, owners,
deletion, and the Idempotency-Key records that ride in the turn's commit.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.base import errors
from agent.base.clock import utc_now
from agent.store.backend import HistoryBackend, IdempotencyBackend, SpendBackend, ToolRunBackend
from agent.store.history import (
    MAX_TURN_BYTES,
    ClaimLost,
    Deleted,
    Deletion,
    SessionBusy,
    SessionInfo,
    SessionTaken,
    Summary,
    TurnTooLarge,
    UsageTotals,
    encode,
)
from agent.store.idempotency_records import KeyClaim, StoredResponse
from agent.store.paused_runs import PauseChanged, PausedRun, PendingCall, RunPaused
from agent.store.spend import DaySpend
from agent.store.tool_runs import ToolCall

TTL = 60
SECOND = dt.timedelta(seconds=1)


@dataclass
class Stores:
    history: HistoryBackend
    keys: IdempotencyBackend
    spend: SpendBackend
    tool_runs: ToolRunBackend


@pytest.fixture(params=["firestore", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    if request.param == "firestore":
        from google.cloud import firestore as fs

        from agent.store.history import HistoryStore
        from agent.store.idempotency_records import IdempotencyStore
        from agent.store.spend import SpendStore
        from agent.store.tool_runs import ToolRunStore

        request.getfixturevalue("firestore")  # the emulator, wiped; skips where absent
        client = fs.Client()
        yield Stores(
            HistoryStore(client, ttl_seconds=TTL, timeout_seconds=3),
            IdempotencyStore(client, ttl_seconds=TTL, timeout_seconds=3),
            SpendStore(client, timeout_seconds=3),
            ToolRunStore(client, ttl_seconds=TTL, timeout_seconds=3),
        )
        return
    from agent.store.sqlite_db import Database
    from agent.store.sqlite_history import SqliteHistoryStore
    from agent.store.sqlite_idempotency import SqliteIdempotencyStore
    from agent.store.sqlite_spend import SqliteSpendStore
    from agent.store.sqlite_tool_runs import SqliteToolRunStore

    database = Database(str(tmp_path / "history.sqlite3"), timeout_seconds=3)
    yield Stores(
        SqliteHistoryStore(database, ttl_seconds=TTL),
        SqliteIdempotencyStore(database, ttl_seconds=TTL),
        SqliteSpendStore(database),
        SqliteToolRunStore(database, ttl_seconds=TTL),
    )
    database.close()


def item(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


def turn(
    store: HistoryBackend,
    session_id: str,
    *texts: str,
    now: dt.datetime | None = None,
    owner: str | None = None,
) -> None:
    now = now or utc_now()
    claim = store.claim(session_id, now, now + 10 * SECOND, owner)
    store.commit(claim, [item(t) for t in texts], now)


def test_a_turn_is_claimed_committed_and_read_back(stores: Stores) -> None:
    now = utc_now()
    claim = stores.history.claim("s", now, now + 10 * SECOND)
    assert claim.new_session and claim.history == [] and claim.turns == 0
    assert stores.history.load("s", now) is None  # claimed, nothing committed: absent
    history = stores.history.commit(claim, [item("a"), item("b", "assistant")], now)
    assert history.turns == 1 and history.expire_at == now + TTL * SECOND
    turn(stores.history, "s", "c", now=now + SECOND)
    loaded = stores.history.load("s", now + 2 * SECOND)
    assert loaded is not None and loaded.turns == 2
    assert [i["content"] for i in loaded.items] == ["a", "b", "c"]
    assert loaded.expire_at == now + SECOND + TTL * SECOND  # slid by the last turn


def test_a_held_session_is_refused_at_once_and_a_lapsed_claim_is_taken(stores: Stores) -> None:
    # In the past: a commit whose claim lapsed by the real clock is lost (Firestore
    # finds out a refused commit's outcome by the real clock).
    now = utc_now() - 20 * SECOND
    turn(stores.history, "s", "first", now=now)
    first = stores.history.claim("s", now, now + 5 * SECOND)
    with pytest.raises(SessionBusy) as busy:
        stores.history.claim("s", now + SECOND, now + 10 * SECOND)
    assert 1 <= busy.value.retry_after <= 5
    with pytest.raises(SessionBusy):
        stores.history.delete("s", now + SECOND)
    later = now + 6 * SECOND  # the first claim has lapsed
    second = stores.history.claim("s", later, later + 5 * SECOND)
    with pytest.raises(ClaimLost):  # a turn whose claim was taken writes nothing
        stores.history.commit(first, [item("lost")], later)
    stores.history.commit(second, [item("kept")], later)
    loaded = stores.history.load("s", later)
    assert loaded is not None and [i["content"] for i in loaded.items] == ["first", "kept"]


def test_racing_claims_exactly_one_wins(stores: Stores) -> None:
    now = utc_now()
    start = threading.Barrier(6)

    def race(_: int) -> str:
        start.wait()
        try:
            stores.history.claim("race", now, now + 10 * SECOND)
        except SessionBusy:
            return "busy"
        return "won"

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(race, range(6)))
    assert outcomes == ["busy"] * 5 + ["won"]


def test_a_commit_is_all_or_nothing(stores: Stores) -> None:
    now = utc_now()
    turn(stores.history, "s", "before", now=now)
    claim = stores.history.claim("s", now, now + 10 * SECOND)

    def fail(batch: Any, expire_at: dt.datetime) -> None:
        raise RuntimeError("the caller's own write failed")

    with pytest.raises(RuntimeError):
        stores.history.commit(claim, [item("never")], now, extra_writes=fail)
    stores.history.release(claim)
    loaded = stores.history.load("s", now)
    assert loaded is not None and [i["content"] for i in loaded.items] == ["before"]
    with pytest.raises(TurnTooLarge):
        claim = stores.history.claim("s", now, now + 10 * SECOND)
        stores.history.commit(claim, [item("x" * MAX_TURN_BYTES)], now)
    stores.history.release(claim)
    turn(stores.history, "s", "after", now=now)  # released: the next turn runs


def test_a_released_first_turn_leaves_nothing(stores: Stores) -> None:
    now = utc_now()
    stores.history.release(stores.history.claim("s", now, now + 10 * SECOND))
    assert stores.history.load("s", now) is None
    assert stores.history.delete("s", now).outcome is Deletion.ABSENT
    assert stores.history.claim("s", now, now + 10 * SECOND).new_session


def test_expired_sessions_read_as_absent_and_restart_empty(stores: Stores) -> None:
    now = utc_now()
    turn(stores.history, "s", "old", now=now, owner="alice")
    later = now + (TTL + 1) * SECOND
    assert stores.history.load("s", later) is None
    assert stores.history.owner_of("s", later) is None
    claim = stores.history.claim("s", later, later + 10 * SECOND, "bob")  # taken over
    assert claim.new_session and claim.history == []
    stores.history.commit(claim, [item("new")], later)
    loaded = stores.history.load("s", later, "bob")
    assert loaded is not None and [i["content"] for i in loaded.items] == ["new"]
    assert loaded.turns == 1


def test_owners(stores: Stores) -> None:
    now = utc_now()
    turn(stores.history, "s", "mine", now=now, owner="alice")
    assert stores.history.owner_of("s", now) == "alice"
    assert stores.history.load("s", now, "bob") is None
    assert stores.history.load("s", now, "alice") is not None
    with pytest.raises(SessionTaken):
        stores.history.claim("s", now, now + 10 * SECOND, "bob")
    assert stores.history.delete("s", now, "bob").outcome is Deletion.NOT_YOURS
    generation = stores.history.current_generation("s", now)
    assert generation is not None
    assert stores.history.info("s", now) == SessionInfo("alice", generation)
    assert stores.history.delete("s", now, "alice") == Deleted(Deletion.DELETED, generation)
    assert stores.history.load("s", now, "alice") is None
    assert stores.history.info("s", now) is None
    # Gone: absent (Firestore names the life its tombstone records, for a repeated clean-up).
    again = stores.history.delete("s", now, "alice")
    assert again.outcome is Deletion.ABSENT and again.generation in (None, generation)


def test_replace_rewrites_the_whole_history(stores: Stores) -> None:
    now = utc_now()
    turn(stores.history, "s", "a", "b", now=now)
    claim = stores.history.claim("s", now, now + 10 * SECOND)
    stores.history.commit(claim, [item("only")], now, replace=True, count_turn=False)
    loaded = stores.history.load("s", now)
    assert loaded is not None and [i["content"] for i in loaded.items] == ["only"]
    assert loaded.turns == 1


def test_idempotency_records(stores: Stores) -> None:
    keys, now = stores.keys, utc_now()
    until = now + 10 * SECOND
    first = keys.begin("alice", "k", "fp", "s", until)
    assert isinstance(first, KeyClaim) and first.session_id == "s"
    with pytest.raises(errors.ApiError) as running:
        keys.begin("alice", "k", "fp", "other", until)
    assert running.value.code == "idempotency_key_in_progress"
    with pytest.raises(errors.ApiError) as reused:
        keys.begin("alice", "k", "another body", "s", until)
    assert reused.value.code == "idempotency_key_reused"
    assert isinstance(keys.begin("bob", "k", "fp", "s2", until), KeyClaim)  # per principal
    claim = stores.history.claim("s", now, until, "alice")
    response = {"session_id": "s", "reply": "hi"}
    done = keys.completion(first, response, now + TTL * SECOND, claim.generation)
    stores.history.commit(claim, [item("hi")], now, extra_writes=lambda batch, _: done(batch))
    replay = keys.begin("alice", "k", "fp", "ignored", until)
    assert isinstance(replay, StoredResponse) and replay.response == response
    keys.forget_session("s", "alice", "another life")  # not this life's: kept
    assert isinstance(keys.begin("alice", "k", "fp", "ignored", until), StoredResponse)
    keys.forget_session("s", "alice", claim.generation)
    assert isinstance(keys.begin("alice", "k", "fp", "s", until), KeyClaim)  # forgotten


def test_an_abandoned_or_lapsed_key_runs_again(stores: Stores) -> None:
    keys, now = stores.keys, utc_now()
    first = keys.begin("alice", "k", "fp", "s", now + 10 * SECOND)
    assert isinstance(first, KeyClaim)
    keys.abandon(first)
    again = keys.begin("alice", "k", "fp", "s-new", utc_now() + SECOND)
    assert isinstance(again, KeyClaim) and again.session_id == "s-new"
    time.sleep(1.1)  # its turn's claim lapsed without a commit (a dead instance)
    taken = keys.begin("alice", "k", "fp", "ignored", utc_now() + 10 * SECOND)
    assert isinstance(taken, KeyClaim) and taken.session_id == "s-new"  # the same session
    # The lapsed holder's completion must not land: its turn's commit fails whole.
    claim = stores.history.claim("s-new", utc_now(), utc_now() + 10 * SECOND, "alice")
    stale = keys.completion(again, {"reply": "late"}, utc_now() + TTL * SECOND, claim.generation)
    with pytest.raises(ClaimLost):
        stores.history.commit(
            claim, [item("late")], utc_now(), extra_writes=lambda batch, _: stale(batch)
        )
    stores.history.release(claim)
    assert stores.history.load("s-new", utc_now()) is None


def test_each_life_of_an_id_has_its_own_generation(stores: Stores) -> None:
    now = utc_now()
    first = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    assert stores.history.current_generation("s", now) == first.generation  # held
    assert stores.history.info("s", now) is None  # nothing committed: not live
    stores.history.commit(first, [item("a")], now)
    second = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    assert second.generation == first.generation and not second.replaced
    stores.history.release(second)
    later = now + (TTL + 1) * SECOND  # expired: the next claim starts a new life
    assert stores.history.current_generation("s", later) is None
    third = stores.history.claim("s", later, later + 10 * SECOND, "alice")
    assert third.replaced and third.new_session and third.generation != first.generation
    stores.history.commit(third, [item("b")], later)
    deleted = stores.history.delete("s", later, "alice")
    assert deleted == Deleted(Deletion.DELETED, third.generation)
    assert stores.history.current_generation("s", later) is None


def test_a_summary_and_the_token_ratio_are_stored_with_the_turn(stores: Stores) -> None:
    now = utc_now()
    texts = ["one", "two", "three", "four"]
    turn(stores.history, "s", *texts, now=now)
    claim = stores.history.claim("s", now, now + 10 * SECOND)
    assert claim.summary is None and claim.token_ratio == 1.0 and claim.item_count == 4
    ends = [len(encode([item(t) for t in texts[: n + 1]])) for n in range(4)]
    assert list(claim.item_ends) == ends
    summary = Summary("one and two", 2, ends[1])
    stored = stores.history.commit(claim, [item("five")], now, summary=summary, token_ratio=1.25)
    assert stored.summary == "one and two" and stored.summary_items == 2
    loaded = stores.history.load("s", now)
    assert loaded is not None and loaded.summary == "one and two" and loaded.summary_items == 2
    assert [i["content"] for i in loaded.items] == [*texts, "five"]  # all items kept
    claim = stores.history.claim("s", now, now + 10 * SECOND)
    assert claim.summary == summary and claim.token_ratio == 1.25 and claim.item_count == 5
    assert [i["content"] for i in claim.history] == ["three", "four", "five"]
    all_ends = [len(encode([item(t) for t in [*texts, "five"][: n + 1]])) for n in range(5)]
    assert list(claim.item_ends) == all_ends[2:]
    with pytest.raises(ValueError):
        stores.history.commit(claim, [item("x")], now, replace=True)
    stores.history.commit(claim, [item("six")], now)  # no new summary: the old one stays
    claim = stores.history.claim("s", now, now + 10 * SECOND)
    assert claim.summary == summary and claim.token_ratio == 1.25 and claim.item_count == 6
    stores.history.release(claim)


def test_usage_totals_ride_in_the_turns_commit(stores: Stores) -> None:
    now = utc_now()
    claim = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    assert claim.totals == UsageTotals()
    first = UsageTotals(2, 300, 100, 40, 0.0012)
    stored = stores.history.commit(claim, [item("a")], now, totals=first)
    assert stored.totals == first
    loaded = stores.history.load("s", now, "alice")
    assert loaded is not None and loaded.totals == first
    claim = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    assert claim.totals == first  # what the next turn adds to

    def fail(batch: Any, expire_at: dt.datetime) -> None:
        raise RuntimeError("the turn fails at its commit")

    with pytest.raises(RuntimeError):
        stores.history.commit(claim, [item("b")], now, totals=first.plus(first), extra_writes=fail)
    stores.history.release(claim)
    loaded = stores.history.load("s", now, "alice")
    assert loaded is not None and loaded.totals == first  # a failed turn adds nothing
    claim = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    stores.history.commit(claim, [item("c")], now)  # library use: totals left as they were
    loaded = stores.history.load("s", now, "alice")
    assert loaded is not None and loaded.totals == first
    both = first.plus(UsageTotals(1, 10, 0, 5, 0.0001))
    claim = stores.history.claim("s", now, now + 10 * SECOND, "alice")
    stores.history.commit(claim, [item("d")], now, totals=both)
    loaded = stores.history.load("s", now, "alice")
    assert loaded is not None and loaded.totals == both and loaded.totals.cost_usd == 0.0013
    later = now + (TTL + 1) * SECOND  # expired: a new life starts from zero
    claim = stores.history.claim("s", later, later + 10 * SECOND, "alice")
    assert claim.new_session and claim.totals == UsageTotals()
    stores.history.commit(claim, [item("e")], later)
    loaded = stores.history.load("s", later, "alice")
    assert loaded is not None and loaded.totals == UsageTotals()


def test_a_turn_holds_then_settles_apart_from_any_commit(stores: Stores) -> None:
    now = utc_now()
    today, tomorrow = now.date(), now.date() + dt.timedelta(days=1)
    assert stores.spend.charged("alice", today) == DaySpend()
    assert stores.spend.hold("alice", today, "t1", 500_000) == DaySpend()  # nothing before
    assert stores.spend.charged("alice", today) == DaySpend(0, 500_000)
    assert stores.spend.hold("alice", today, "t2", 500_000) == DaySpend(0, 500_000)
    stores.spend.settle("alice", today, "t1", 250_001, 2)
    assert stores.spend.charged("alice", today) == DaySpend(250_001, 500_000)
    stores.spend.settle("alice", today, "t1", 250_001, 2)  # repeated (a lost reply): once
    stores.spend.settle("alice", today, "t2", 0, 0)  # a refused turn's released hold
    assert stores.spend.charged("alice", today) == DaySpend(250_001, 0)
    assert stores.spend.spent("alice", today) == 0.250001  # exact: integer micro-dollars
    assert stores.spend.charged("bob", today) == DaySpend()  # per principal
    assert stores.spend.charged("alice", tomorrow) == DaySpend()  # per UTC day


def test_concurrent_holds_of_one_principal_are_ordered(stores: Stores) -> None:
    """Many turns of one principal holding at once: none conflicts, none is lost, and
    what each saw before its own hold orders them: exactly one saw no other hold."""
    now = utc_now()
    start = threading.Barrier(16)

    def one(n: int) -> DaySpend:
        start.wait()
        return stores.spend.hold("alice", now.date(), f"t{n}", 125_000)

    with ThreadPoolExecutor(16) as pool:
        seen = list(pool.map(one, range(16)))
    assert stores.spend.charged("alice", now.date()) == DaySpend(0, 16 * 125_000)
    assert sorted(s.held_micros for s in seen) == [n * 125_000 for n in range(16)]


def paused_run(pause_id: str = "p1") -> PausedRun:
    return PausedRun(
        pause_id=pause_id,
        pending=(PendingCall("call_1", "send_message", '{"to": "bob"}'),),
        fingerprint="f" * 64,
        paused_at=utc_now().replace(microsecond=0),
        state=PausedRun.compress('{"state": "of the run"}'),
        folded=2,
    )


def test_a_paused_run_blocks_turns_until_its_resume_commits(stores: Stores) -> None:
    now = utc_now()
    claim = stores.history.claim("p", now, now + 10 * SECOND, "alice")
    stores.history.commit(claim, [item("send it")], now, paused=paused_run())
    loaded = stores.history.load("p", now, "alice")
    assert loaded is not None and [c.call_id for c in loaded.pending] == ["call_1"]
    pause = stores.history.paused_run("p", now, "alice")
    assert pause is not None and pause.pause_id == "p1" and pause.folded == 2
    assert stores.history.paused_run("p", now, "bob") is None  # someone else's: absent
    with pytest.raises(RunPaused) as refused:  # a new turn: refused, nothing written
        stores.history.claim("p", now, now + 10 * SECOND, "alice")
    assert refused.value.pending == ("call_1",)
    with pytest.raises(PauseChanged):  # a resume of a pause that is not the session's
        stores.history.claim("p", now, now + 10 * SECOND, "alice", resume="p0")
    resume = stores.history.claim("p", now, now + 10 * SECOND, "alice", resume="p1")
    assert resume.paused is not None and resume.paused.state_json() == '{"state": "of the run"}'
    assert resume.paused.attempts == 0
    decision = {"call_id": "call_1", "approved": True, "by": "alice"}
    stores.history.release(resume)  # a failed resume: the pause stays, counted
    again = stores.history.claim("p", now, now + 10 * SECOND, "alice", resume="p1")
    assert again.paused is not None and again.paused.attempts == 1
    history = stores.history.commit(again, [item("done", "assistant")], now, decisions=[decision])
    assert history.pending == () and history.approvals == (decision,)
    loaded = stores.history.load("p", now, "alice")
    assert loaded is not None and loaded.pending == () and loaded.approvals == (decision,)
    assert stores.history.paused_run("p", now, "alice") is None
    turn(stores.history, "p", "next", now=now, owner="alice")  # open again
    with pytest.raises(PauseChanged):  # the same decision once more: nothing pending
        stores.history.claim("p", now, now + 10 * SECOND, "alice", resume="p1")


def test_a_paused_run_expires_and_goes_with_its_session(stores: Stores) -> None:
    now = utc_now()
    claim = stores.history.claim("px", now, now + 10 * SECOND, "alice")
    stores.history.commit(claim, [item("send it")], now, paused=paused_run())
    later = now + (TTL + 1) * SECOND
    assert stores.history.paused_run("px", later, "alice") is None
    with pytest.raises(PauseChanged):
        stores.history.claim("px", later, later + 10 * SECOND, "alice", resume="p1")
    fresh = stores.history.claim("px", later, later + 10 * SECOND, "alice")  # a new life
    assert fresh.new_session and fresh.paused is None


def run_of(call_id: str = "call_1", pause_id: str = "p1", digest: str = "d1") -> ToolCall:
    return ToolCall(pause_id, call_id, "send_message", digest)


def test_an_approved_call_starts_once(stores: Stores) -> None:
    now = utc_now()
    call = run_of()
    with ThreadPoolExecutor(8) as pool:
        starts = list(pool.map(lambda _: stores.tool_runs.start("t", "g1", call, now), range(8)))
    assert starts.count(None) == 1  # exactly one may run it
    assert all(s is not None and s.output is None for s in starts if s is not None)
    stores.tool_runs.finish("t", "g1", call, "sent to bob")
    earlier = stores.tool_runs.start("t", "g1", call, now)
    assert earlier is not None and earlier.output == "sent to bob"
    assert stores.tool_runs.start("t", "g2", call, now) is None  # another life's call


def test_a_tool_run_is_keyed_on_its_pause_and_call_id(stores: Stores) -> None:
    """Issue 20 item 6: a provider that reuses call ids must not make one pause's call
    meet another's record; any call id makes a valid key; the record keeps the tool and
    the argument digest, and tells which call ids this life used."""
    now = utc_now()
    odd = "call/../x y~z"  # a '/' would make an invalid Firestore path if used raw
    first, reused = run_of(odd, "p1", "d-alice"), run_of(odd, "p2", "d-bob")
    assert stores.tool_runs.start("t", "g1", first, now) is None
    stores.tool_runs.finish("t", "g1", first, "sent to alice")
    assert stores.tool_runs.start("t", "g1", reused, now) is None  # another pause: may run
    earlier = stores.tool_runs.earlier("t", "g1", [first, run_of("call_never", "p1")])
    assert list(earlier) == [odd]
    assert earlier[odd].output == "sent to alice"
    assert earlier[odd].matches(first) and not earlier[odd].matches(reused)
    assert stores.tool_runs.used("t", "g1", [odd, "call_never"]) == {odd}
    assert stores.tool_runs.used("t", "g2", [odd]) == set()  # another life
    assert stores.tool_runs.earlier("t", "g1", []) == {}
    stores.tool_runs.forget_session("t", "g1")
    assert stores.tool_runs.used("t", "g1", [odd]) == set()
    assert stores.tool_runs.earlier("t", "g1", [first]) == {}
