"""``FirestoreSession`` as a plain Agents SDK Session, against cases of the SDK's own
session tests (written for ``SQLiteSession``: tests/memory/test_session_limit.py and the
concurrency cases), on the real emulator and the demo model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner
from agents.memory import SessionSettings
from google.cloud import firestore as fs
from openai import AsyncOpenAI

from agent.store.history import HistoryStore
from agent.store.session import FirestoreSession
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL


@pytest.fixture
def store(firestore: object) -> Iterator[HistoryStore]:
    yield HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=5)


def agent_on(model: DemoModelServer) -> Agent[None]:
    client = AsyncOpenAI(base_url=model.base_url, api_key="test", max_retries=0)
    return Agent(name="a", model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client))


def texts(items: list[Any]) -> list[str]:
    return [
        i["content"] if isinstance(i["content"], str) else i["content"][0]["text"] for i in items
    ]


def test_session_settings_limit_caps_what_the_model_sees(
    store: HistoryStore, model: DemoModelServer
) -> None:
    async def go() -> None:
        session = FirestoreSession("limit", store)
        agent = agent_on(model)
        for n in (1, 2, 3):
            await Runner.run(agent, f"Message {n}", session=session)
        assert len(await session.get_items()) == 6
        limited = RunConfig(session_settings=SessionSettings(limit=2))
        await Runner.run(agent, "Message 4", session=session, run_config=limited)
        sent = [m for m in model.requests[-1]["messages"] if m["role"] != "system"]
        assert sent[0]["content"] == "Message 3" and len(sent) == 3

    asyncio.run(go())


def test_the_sessions_own_settings_limit_get_items(store: HistoryStore) -> None:
    async def go() -> None:
        items: list[Any] = [{"role": "user", "content": str(n)} for n in range(5)]
        await FirestoreSession("own", store).add_items(items)
        capped = FirestoreSession("own", store, session_settings=SessionSettings(limit=2))
        assert texts(await capped.get_items()) == ["3", "4"]
        assert texts(await capped.get_items(limit=1)) == ["4"]  # explicit wins
        assert await capped.get_items(limit=0) == []
        assert await capped.get_items(limit=-1) == []
        assert len(await FirestoreSession("own", store).get_items()) == 5

    asyncio.run(go())


def test_ten_concurrent_add_items_store_all_ten(store: HistoryStore) -> None:
    async def go() -> list[str]:
        sessions = [FirestoreSession("busy", store) for _ in range(10)]
        await asyncio.gather(
            *(
                s.add_items([{"role": "user", "content": f"item {n}"}])
                for n, s in enumerate(sessions)
            )
        )
        return texts(await FirestoreSession("busy", store).get_items())

    stored = asyncio.run(go())
    assert sorted(stored) == sorted(f"item {n}" for n in range(10))
