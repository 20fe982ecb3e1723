"""The Firestore layout's promises, measured on the real emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner
from google.cloud import firestore as fs
from openai import AsyncOpenAI

from agent.base.settings import Settings
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.store.history import CHUNK_BYTES, HistoryStore, SessionBusy, encode
from agent.store.schema import CHUNKS, COLLECTION_GROUPS, SESSIONS, TTL_FIELD
from agent.store.session import FirestoreSession
from agent.turn.runner import TurnRunner
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MIB = 1024 * 1024


class CountingClient:
    """A real Firestore client whose RPCs are counted on the way to the emulator."""

    def __init__(self) -> None:
        self.client = fs.Client()
        self.calls: Counter[str] = Counter()
        api = self.client._firestore_api
        for name in ("commit", "batch_get_documents", "run_query", "get_document"):
            setattr(api, name, self._wrap(name, getattr(api, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if name == "commit":
                self.calls["commits"] += 1
                return result
            if name == "batch_get_documents":
                return self._count_found(result)
            self.calls[name] += 1
            return result

        return counted

    def _count_found(self, responses: Iterator[Any]) -> Iterator[Any]:
        for response in responses:
            self.calls["reads"] += 1  # found or missing, each is billed as a read
            yield response


@pytest.fixture
def counting(firestore) -> CountingClient:
    return CountingClient()


@pytest.fixture
def store(counting: CountingClient) -> HistoryStore:
    return HistoryStore(counting.client, ttl_seconds=600, timeout_seconds=3)


def item(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def all_documents() -> list[fs.DocumentSnapshot]:
    db = fs.Client()
    return [d for group in COLLECTION_GROUPS for d in db.collection_group(group).stream()]


def doc_size(data: dict[str, Any]) -> int:
    """Firestore's documented size rules, enough for bytes/str/int/timestamp fields."""
    size = 0
    for name, value in data.items():
        size += len(name) + 1
        if isinstance(value, bytes | str):
            size += len(value if isinstance(value, bytes) else value.encode()) + 1
        else:
            size += 8
    return size + 32 + 16


def test_five_megabyte_history_round_trips_with_no_document_near_the_limit(store) -> None:
    big = [item(f"{n}:" + "é" * 60_000) for n in range(45)]  # ~5.4 MB of UTF-8
    for part in (big[:20], big[20:]):  # one turn may add at most MAX_TURN_BYTES
        claim = store.claim("big", NOW, NOW + dt.timedelta(seconds=60))
        store.commit(claim, part, NOW)
    loaded = store.load("big", NOW)
    assert loaded is not None and loaded.items == big
    docs = all_documents()
    sizes = [doc_size(d.to_dict()) for d in docs]
    stored = sum(len(d.to_dict().get("data", b"") + d.to_dict().get("tail", b"")) for d in docs)
    assert stored == len(encode(big)) > 5 * MIB
    assert max(sizes) <= CHUNK_BYTES + 1024 < MIB // 2 + 2048
    assert len(docs) == 1 + len(encode(big)) // CHUNK_BYTES


def test_every_document_carries_the_ttl_field(store) -> None:
    claim = store.claim("ttl", NOW, NOW + dt.timedelta(seconds=60))
    store.commit(claim, [item("x" * 400_000), item("y" * 400_000)], NOW)
    later = NOW + dt.timedelta(seconds=100)
    claim = store.claim("ttl", later, later + dt.timedelta(seconds=60))
    store.commit(claim, [item("z")], later)
    docs = all_documents()
    assert {d.reference.parent.id for d in docs} == {SESSIONS, CHUNKS}
    for doc in docs:  # the session's slid to the last turn's time + TTL, no chunk's before
        if doc.reference.parent.id == SESSIONS:
            assert doc.to_dict()[TTL_FIELD] == later + dt.timedelta(seconds=600)
        else:
            assert doc.to_dict()[TTL_FIELD] >= later + dt.timedelta(seconds=600)


def test_expired_session_reads_as_absent_and_restarts_empty(store) -> None:
    claim = store.claim("old", NOW, NOW + dt.timedelta(seconds=60))
    store.commit(claim, [item("a" * 600_000)], NOW)
    after = NOW + dt.timedelta(seconds=601)
    assert store.load("old", after) is None
    claim = store.claim("old", after, after + dt.timedelta(seconds=60))
    assert claim.new_session and claim.history == []
    store.commit(claim, [item("fresh")], after)
    assert store.load("old", after).items == [item("fresh")]
    assert len(all_documents()) == 1  # the expired history's chunk was deleted


def test_second_claim_is_refused_at_once_and_a_lapsed_claim_is_taken(store) -> None:
    store.claim("c", NOW, NOW + dt.timedelta(seconds=30))
    started = time.monotonic()
    with pytest.raises(SessionBusy):
        store.claim("c", NOW + dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=31))
    assert time.monotonic() - started < 0.5  # no lock wait
    # An instance that crashed never committed nor released: its claim lapses.
    later = NOW + dt.timedelta(seconds=31)
    claim = store.claim("c", later, later + dt.timedelta(seconds=30))
    store.commit(claim, [item("after crash")], later)
    assert store.load("c", later).items == [item("after crash")]


def test_racing_claims_exactly_one_wins(store) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(_: int) -> str:
        try:
            store.claim("race", NOW, NOW + dt.timedelta(seconds=30))
            return "won"
        except SessionBusy:
            return "busy"

    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(attempt, range(8)))
    assert outcomes == {"won": 1, "busy": 7}


@pytest.fixture
def runner(counting, model: DemoModelServer, settings_env) -> Iterator[TurnRunner]:
    settings = Settings.from_env(settings_env)
    store = HistoryStore(counting.client, ttl_seconds=600, timeout_seconds=3)
    loop = BackgroundLoop()
    yield TurnRunner(build_agent(settings, build_model(settings)), store, loop, settings)
    loop.close()


@pytest.mark.parametrize("history_kib", [0, 100, 500])
def test_a_turn_costs_at_most_two_reads_and_two_commits(runner, counting, history_kib) -> None:
    store = HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=3)
    now = dt.datetime.now(dt.UTC)
    if history_kib:
        claim = store.claim("cost", now, now + dt.timedelta(seconds=30))
        store.commit(claim, [item("h" * (history_kib * 1024 - 40))], now)
    counting.calls.clear()
    outcome = runner.run("cost", "hello", time.monotonic(), owner=None)
    assert outcome.reply.startswith("[demo model]")
    assert counting.calls["commits"] == 2
    assert counting.calls["reads"] <= 2
    assert counting.calls["run_query"] == 0


def test_reads_grow_with_bytes_not_items(runner, counting) -> None:
    store = HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=3)
    now = dt.datetime.now(dt.UTC)
    claim = store.claim("many", now, now + dt.timedelta(seconds=30))
    store.commit(claim, [item(f"short item {n}") for n in range(2000)], now)
    claim = store.claim("large", now, now + dt.timedelta(seconds=30))
    store.commit(claim, [item("L" * 100_000) for _ in range(20)], now)  # ~2 MB
    counting.calls.clear()
    runner.run("many", "hi", time.monotonic(), owner=None)
    assert counting.calls["reads"] == 1  # 2000 items, one document
    counting.calls.clear()
    runner.run("large", "hi", time.monotonic(), owner=None)
    history = store.load("large", dt.datetime.now(dt.UTC))
    assert history is not None
    assert counting.calls["reads"] == 1 + len(encode(history.items[:20])) // CHUNK_BYTES


def test_firestore_session_works_on_its_own_with_the_runner(firestore, model) -> None:
    async def conversation() -> list[str]:
        store = HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=3)
        session = FirestoreSession("standalone", store)
        client = AsyncOpenAI(base_url=model.base_url, api_key="test", max_retries=0)
        agent = Agent(
            name="a",
            instructions="be brief",
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        )
        first = await Runner.run(agent, "I like tea", session=session)
        second = await Runner.run(agent, "what do I like?", session=session)
        assert await session.pop_item() is not None
        assert len(await session.get_items()) == 3
        assert await session.get_items(limit=1) == [(await session.get_items())[-1]]
        await session.clear_session()
        assert await session.get_items() == []
        return [str(first.final_output), str(second.final_output)]

    replies = asyncio.run(conversation())
    assert 'your first message was: "I like tea"' in replies[1]
