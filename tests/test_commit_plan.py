"""The plan of a turn's commit (``agent/store/commit_plan.py``): what it writes, worked
out once for both backends. Pure: no store is needed to check the arithmetic; the
contract suite (``test_store_contract.py``) checks what each backend makes of it."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.store.commit_plan import CHUNK_BYTES, PlannedCommits, plan_commit
from agent.store.history import HistoryStore
from agent.store.history_types import Claim, Summary, TurnTooLarge, UsageTotals, decode, encode
from agent.store.sqlite_history import SqliteHistoryStore

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
TTL = dt.timedelta(minutes=10)


def claim(**fields: object) -> Claim:
    base: dict[str, object] = {
        "session_id": "s",
        "token": "t",
        "update_time": None,
        "new_session": False,
        "history": [{"n": 0}],
        "turns": 1,
        "tail": b"",
        "chunks": 0,
        "stale_chunks": 0,
        "total_bytes": 0,
        "created_at": NOW,
        "until": NOW + TTL,
        "generation": "g",
    }
    return Claim(**(base | fields))  # type: ignore[arg-type]


def test_both_backends_commit_by_the_one_plan() -> None:
    assert HistoryStore.commit is PlannedCommits.commit
    assert SqliteHistoryStore.commit is PlannedCommits.commit


def test_the_new_items_seal_chunks_after_the_claims_and_keep_every_byte() -> None:
    old_tail = b'{"old":1}\n'
    items = [{"text": "x" * (CHUNK_BYTES // 2)} for _ in range(5)]
    earlier = claim(chunks=3, tail=old_tail, total_bytes=3 * CHUNK_BYTES + len(old_tail))
    plan = plan_commit(earlier, items, NOW, TTL)
    added = encode(items)
    assert [index for index, _ in plan.sealed] == [3, 4]
    assert all(len(data) == CHUNK_BYTES for _, data in plan.sealed)
    assert b"".join(data for _, data in plan.sealed) + plan.tail == old_tail + added
    assert plan.chunks == 5
    assert decode(b"\n".join(line.encode() for line in plan.lines)) == items
    assert plan.total_bytes == earlier.total_bytes + len(added)
    assert (plan.first_item, plan.items, plan.turns) == (1, 6, 2)
    assert plan.expire_at == NOW + TTL
    assert plan.chunk_expire_at == NOW + TTL * 1.5
    assert plan.stored.items == [{"n": 0}, *items]


def test_a_replace_drops_the_chunks_past_the_new_history() -> None:
    plan = plan_commit(claim(chunks=4, stale_chunks=6), [{"n": 1}], NOW, TTL, replace=True)
    assert (plan.chunks, plan.dropped, plan.first_item, plan.items) == (0, range(0, 6), 0, 1)
    assert plan.stored.items == [{"n": 1}]


def test_what_the_turn_does_not_change_is_kept() -> None:
    kept = Summary("so far", 1, 10)
    totals = UsageTotals(requests=2)
    plan = plan_commit(claim(summary=kept, totals=totals), [], NOW, TTL, count_turn=False)
    assert (plan.summary, plan.token_ratio, plan.totals, plan.decided) == (kept, None, None, False)
    assert (plan.turns, plan.stored.summary, plan.stored.totals) == (1, "so far", totals)


def test_a_turn_over_the_bound_plans_nothing() -> None:
    with pytest.raises(TurnTooLarge):
        plan_commit(claim(), [{"text": "x" * (3 * 1024 * 1024)}], NOW, TTL)
    with pytest.raises(ValueError, match="summarised"):
        plan_commit(claim(summary=Summary("s", 1, 10)), [], NOW, TTL, replace=True)
