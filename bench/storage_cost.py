"""Firestore documents read and written by one turn, by history length and layout.

Counted at the gRPC layer of a real client talking to the emulator, as
``tests/test_history_store.py`` does: each document found or missing in a lookup is a
read, each document returned by a query is a read, each write in a commit is a write.
Bytes are the serialized writes sent.

Layouts compared:
* ``service``: this service's turn (``TurnRunner.run``: claim, run, commit).
* ``naive: doc per item``: each item its own document; a turn queries them all and
  adds one document per new item.
* ``naive: doc per history``: the article's design; one document holds the whole
  history, read and rewritten whole on every turn.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from google.cloud import firestore

from agent.base.settings import Settings
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.store.history import HistoryStore, encode
from agent.turn.runner import TurnRunner

Item = dict[str, Any]


class CountingClient:
    """A real Firestore client whose RPCs are counted on their way to the emulator."""

    def __init__(self) -> None:
        self.client = firestore.Client()
        self.calls: Counter[str] = Counter()
        api = self.client._firestore_api
        api.commit = self._counted_commit(api.commit)
        api.batch_get_documents = self._counted_stream(api.batch_get_documents, "found")
        api.run_query = self._counted_stream(api.run_query, "document")

    def _counted_commit(self, method: Any) -> Any:
        def commit(*args: Any, **kwargs: Any) -> Any:
            writes = kwargs["request"]["writes"]
            self.calls["commits"] += 1
            self.calls["writes"] += len(writes)
            self.calls["bytes_written"] += sum(type(w).pb(w).ByteSize() for w in writes)
            return method(*args, **kwargs)

        return commit

    def _counted_stream(self, method: Any, field: str) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
            # Counted as they come: callers may stop reading the stream early.
            for response in method(*args, **kwargs):
                if field == "found" or response._pb.HasField(field):
                    self.calls["reads"] += 1
                yield response

        return counted


def conversation(turns: int) -> list[Item]:
    """``turns`` turns of typical size: a short question and a paragraph of answer."""
    items: list[Item] = []
    for n in range(turns):
        items.append({"role": "user", "content": f"question {n}: " + "q" * 90})
        items.append(
            {
                "id": f"msg_{n}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "annotations": [], "text": "a" * 400}],
            }
        )
    return items


class DocPerItem:
    def __init__(self, client: firestore.Client, session_id: str) -> None:
        self._items = client.collection("naive_items").document(session_id).collection("items")
        self._client = client

    def load(self) -> list[Item]:
        return [d.to_dict() or {} for d in self._items.order_by("n").stream()]

    def append(self, items: list[Item], first: int) -> None:
        for start in range(0, len(items), 500):  # a commit takes at most 500 writes
            batch = self._client.batch()
            for n, item in enumerate(items[start : start + 500], start=first + start):
                batch.set(self._items.document(f"{n:07d}"), {"n": n, "item": item})
            batch.commit()


class DocPerHistory:
    def __init__(self, client: firestore.Client, session_id: str) -> None:
        self._doc = client.collection("naive_history").document(session_id)

    def load(self) -> list[Item]:
        snapshot = self._doc.get()
        return list((snapshot.to_dict() or {}).get("history", [])) if snapshot.exists else []

    def save(self, items: list[Item]) -> None:
        self._doc.set({"history": items, "ttl": time.time() + 3600})


def measure(lengths: list[int], settings: Settings) -> list[dict[str, Any]]:
    """One turn's cost at each history length, for each layout."""
    counting = CountingClient()
    store = HistoryStore(counting.client, ttl_seconds=3600, timeout_seconds=10)
    loop = BackgroundLoop()
    runner = TurnRunner(build_agent(settings, build_model(settings)), store, loop, settings)
    new_turn = conversation(1)
    rows = []
    try:
        for turns in lengths:
            history = conversation(turns)
            session = f"cost-{turns}"
            now = dt.datetime.now(dt.UTC)
            claim = store.claim(session, now, now + dt.timedelta(seconds=60))
            store.commit(claim, history, now)
            per_item = DocPerItem(counting.client, session)
            per_item.append(history, 0)
            per_history = DocPerHistory(counting.client, session)
            per_history.save(history)

            counting.calls.clear()
            runner.run(session, "one more question", time.monotonic(), owner=None)
            rows.append(_row("service", turns, history, counting.calls))

            counting.calls.clear()
            loaded = per_item.load()
            per_item.append(new_turn, len(loaded))
            rows.append(_row("naive: doc per item", turns, history, counting.calls))

            counting.calls.clear()
            per_history.save([*per_history.load(), *new_turn])
            rows.append(_row("naive: doc per history", turns, history, counting.calls))
    finally:
        loop.close()
    return rows


def _row(layout: str, turns: int, history: list[Item], calls: Counter[str]) -> dict[str, Any]:
    return {
        "layout": layout,
        "history_turns": turns,
        "history_kib": round(len(encode(history)) / 1024, 1),
        "reads": calls["reads"],
        "writes": calls["writes"],
        "commits": calls["commits"],
        "kib_written": round(calls["bytes_written"] / 1024, 1),
    }
