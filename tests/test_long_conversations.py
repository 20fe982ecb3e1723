"""Conversations that never outgrow the model (``CONTEXT_MAX_TOKENS``).

The demo model here is as strict as OpenAI: it has a context window and answers 400
``context_length_exceeded`` past it, and 400 when a tool message answers no call it was
sent. So a turn that succeeds proves its model calls fit and kept tool pairs whole.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs

from agent.base import errors
from agent.base.settings import Settings
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.store.history import HistoryStore
from agent.turn.context_window import ContextKeeper
from agent.turn.runner import TurnRunner
from local.demo_model import DemoModelServer, prompt_tokens
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms
from tests.support.sse_client import parse_body

WINDOW = 4000
PAD = " and then we talked about the weather, the garden, the trains and the sea" * 8


class ReadCounter:
    """A real Firestore client whose document reads are counted on the way out."""

    def __init__(self) -> None:
        self.client = fs.Client()
        self.reads = 0
        api = self.client._firestore_api
        get_all, get_one = api.batch_get_documents, api.get_document

        def counted_all(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for response in get_all(*args, **kwargs):
                self.reads += 1
                yield response

        def counted_one(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return get_one(*args, **kwargs)

        api.batch_get_documents, api.get_document = counted_all, counted_one


@pytest.fixture
def long_runner(
    firestore: object, model: DemoModelServer, settings_env: dict[str, str]
) -> Iterator[tuple[TurnRunner, ReadCounter, HistoryStore]]:
    model.control(context_tokens=WINDOW)
    settings = Settings.from_env(settings_env | {"CONTEXT_MAX_TOKENS": str(WINDOW)})
    counter = ReadCounter()
    store = HistoryStore(counter.client, ttl_seconds=600, timeout_seconds=5)
    llm = build_model(settings)
    agent = build_agent(settings, llm)
    loop = BackgroundLoop()
    keeper = ContextKeeper(agent, llm, WINDOW)
    yield TurnRunner(agent, store, loop, settings, context=keeper), counter, store
    loop.close()


def message(turn: int) -> str:
    if turn == 1:
        return "My name is Ada and my locker number is 4711." + PAD
    if turn % 3 == 0:
        return f"what is {turn} * 3?"  # the demo model calls the calculate tool
    return f"turn {turn}:" + PAD


def test_three_hundred_turns_fit_a_small_window_and_lose_nothing(
    long_runner: tuple[TurnRunner, ReadCounter, HistoryStore], model: DemoModelServer
) -> None:
    runner, counter, store = long_runner
    compacted = 0
    for turn in range(1, 300):
        outcome = runner.run("long", message(turn), time.monotonic(), owner=None)
        compacted += "summary" in outcome.usage
    counter.reads = 0
    last = runner.run("long", "What is my name?", time.monotonic(), owner=None)
    assert counter.reads <= 2  # the summary and the recent tail, not 300 turns
    assert "Ada" in last.reply and "4711" in last.reply  # through the summary
    assert compacted >= 10  # it folded, again and again
    # Every model call fit: the demo model answers 400 past its window, and each turn
    # above would have failed (or been folded and retried) had one not.
    assert max(prompt_tokens(r["messages"], r.get("tools")) for r in model.requests) <= WINDOW
    history = store.load("long", _now())
    assert history is not None and history.summary is not None
    made = history.summary_provenance  # named from the model object itself here
    assert made is not None and made.model == MODEL and made.turns > 100
    users = [i["content"] for i in history.items if i.get("role") == "user"]
    assert len(users) == 300 and users[0].startswith("My name is Ada")  # every turn stored
    calls = Counter(i.get("type") for i in history.items)
    assert calls["function_call"] == calls["function_call_output"] == 99


def test_a_failed_summary_fails_the_turn_and_changes_nothing(
    long_runner: tuple[TurnRunner, ReadCounter, HistoryStore], model: DemoModelServer
) -> None:
    runner, _, store = long_runner
    folds_at = next(  # the first turn that has to fold
        turn
        for turn in range(1, 40)
        if "summary" in runner.run("probe", message(turn), time.monotonic(), owner=None).usage
    )
    for turn in range(1, folds_at):  # the same conversation, up to that turn
        runner.run("fail", message(turn), time.monotonic(), owner=None)
    before = store.load("fail", _now())
    model.control(fail_status=500, fail_count=1)  # its first model call: the summary's
    with pytest.raises(errors.ApiError) as failure:
        runner.run("fail", message(folds_at), time.monotonic(), owner=None)
    assert failure.value.status == 502 and failure.value.code == "model_error"
    after = store.load("fail", _now())
    assert before is not None and after is not None
    assert after.items == before.items and after.summary == before.summary
    # And the turn, retried, folds and succeeds.
    retried = runner.run("fail", message(folds_at), time.monotonic(), owner=None)
    assert "summary" in retried.usage


def test_a_budget_above_the_window_is_corrected_once_then_reported(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    model.control(context_tokens=WINDOW)
    client = make_client(context_max_tokens=3 * WINDOW, model_max_retries=0)
    for turn in range(1, 30):  # grows past the window; each overflow is folded away
        response = client.post("/chat", json={"message": message(turn), "session_id": "over"})
        assert response.status_code == 200, response.get_json()
    model.control(context_tokens=50)  # no summary can fit this
    response = client.post("/chat", json={"message": "hi", "session_id": "over"})
    assert response.status_code == 502
    body = response.get_json()
    assert body["error"]["code"] == "context_overflow"
    assert "CONTEXT_MAX_TOKENS" in body["error"]["message"]
    assert_conforms("POST", "/chat", 502, body, response.headers)


def test_streamed_and_json_turns_compact_alike(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    model.control(context_tokens=WINDOW)
    client = make_client(context_max_tokens=WINDOW)
    for session in ("json", "sse"):
        for turn in range(1, 12):
            body = {"message": message(turn), "session_id": session}
            assert client.post("/chat", json=body).status_code == 200
    events: list[str] = []
    for turn in range(12, 30):
        as_json = client.post("/chat", json={"message": message(turn), "session_id": "json"})
        streamed = client.post(
            "/chat", json={"message": message(turn), "session_id": "sse", "stream": True}
        )
        assert as_json.status_code == streamed.status_code == 200
        names = [event.name for event in parse_body(streamed.get_data())]
        events += names
        folded = "summary" in as_json.get_json()["usage"]
        assert ("context_compacted" in names) == folded
        if folded:
            assert names[0] == "context_compacted" and names.index("context_compacted") < (
                names.index("delta") if "delta" in names else len(names)
            )
    assert "context_compacted" in events
    one, two = client.get("/sessions/json").get_json(), client.get("/sessions/sse").get_json()
    # The same summary (it differs only in when it was written).
    one_summary = {k: v for k, v in one["summary"].items() if k != "written_at"}
    two_summary = {k: v for k, v in two["summary"].items() if k != "written_at"}
    assert one_summary == two_summary and one["summary"]["covers_items"] > 0
    assert len(one["items"]) == len(two["items"])  # every item kept, summarised or not
    assert_conforms("GET", "/sessions/{session_id}", 200, one, {})


def test_two_concurrent_turns_still_give_one_200_and_one_409(
    make_client: Callable[..., FlaskClient], model: DemoModelServer
) -> None:
    client = make_client(context_max_tokens=WINDOW)
    for turn in range(1, 12):
        client.post("/chat", json={"message": message(turn), "session_id": "both"})
    model.control(delay_seconds=0.5)
    statuses: list[int] = []

    def post() -> None:
        body = {"message": message(13), "session_id": "both"}
        statuses.append(client.post("/chat", json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 409]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
