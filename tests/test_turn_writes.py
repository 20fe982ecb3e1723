"""A turn's writes do not grow with its history (issue 24), and no sealed chunk ever
expires before its session document: measured on the real Firestore emulator, each
write counted at the client as it leaves for the emulator."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import firestore as fs

from agent.base.settings import Settings
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.store.history import CHUNK_BYTES, HistoryStore
from agent.store.schema import CHUNK_EXPIRY, CHUNKS, LAST_COMMIT, SESSIONS, TTL_FIELD
from agent.turn.runner import TurnRunner

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
TTL = 600
ANSWER = 2_400_000  # bytes of one large answer: five make the 12 MB history


class WriteCounter:
    """A real Firestore client; each commit's writes are counted by the document they
    touch (session document, chunk, other)."""

    def __init__(self) -> None:
        self.client = fs.Client()
        self.writes: list[str] = []
        api = self.client._firestore_api
        commit = api.commit

        def counted(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request") or args[0]
            writes = request["writes"] if isinstance(request, dict) else request.writes
            for write in writes:
                name = write.update.name or write.delete
                self.writes.append(kind_of(name))
            return commit(*args, **kwargs)

        api.commit = counted

    def clear(self) -> None:
        self.writes.clear()

    def count(self, kind: str | None = None) -> int:
        return sum(1 for k in self.writes if kind is None or k == kind)


def kind_of(name: str) -> str:
    parts = name.split("/documents/", 1)[1].split("/")
    if parts[0] == SESSIONS and len(parts) == 2:
        return "session"
    if len(parts) == 4 and parts[2] == CHUNKS:
        return "chunk"
    return "other"


@pytest.fixture
def counter(firestore) -> WriteCounter:
    return WriteCounter()


@pytest.fixture
def store(counter: WriteCounter) -> HistoryStore:
    return HistoryStore(counter.client, ttl_seconds=TTL, timeout_seconds=10)


def item(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def grow(store: HistoryStore, session_id: str, answers: int, at: dt.datetime) -> None:
    for n in range(answers):  # one large answer per turn (a turn adds at most 3 MiB)
        claim = store.claim(session_id, at, at + dt.timedelta(seconds=60))
        store.commit(claim, [item(f"{n}" + "a" * ANSWER)], at)


def small_turn(store: HistoryStore, session_id: str, at: dt.datetime) -> None:
    claim = store.claim(session_id, at, at + dt.timedelta(seconds=60))
    store.commit(claim, [item("a small question"), item("a short answer")], at)


def expiries(session_id: str) -> tuple[dt.datetime, list[dt.datetime]]:
    db = fs.Client()
    session = db.collection(SESSIONS).document(session_id)
    chunks = [doc.to_dict()[TTL_FIELD] for doc in session.collection(CHUNKS).stream()]
    return session.get().to_dict()[TTL_FIELD], chunks


@pytest.fixture
def runner(counter, model, settings_env) -> Iterator[TurnRunner]:
    settings = Settings.from_env(settings_env)
    store = HistoryStore(counter.client, ttl_seconds=TTL, timeout_seconds=10)
    loop = BackgroundLoop()
    yield TurnRunner(build_agent(settings, build_model(settings)), store, loop, settings)
    loop.close()


def test_a_small_turn_writes_as_much_at_12_mb_of_history_as_on_a_fresh_session(
    runner, counter, store
) -> None:
    now = dt.datetime.now(dt.UTC)
    grow(store, "long", 5, now)  # five 2.4 MB answers: 22 sealed chunks
    chunks = len(expiries("long")[1])
    assert chunks == 5 * (ANSWER + 10) // CHUNK_BYTES
    measured = {}
    for session_id in ("fresh", "long"):
        counter.clear()
        outcome = runner.run(session_id, "hello", time.monotonic(), owner=None)
        assert outcome.reply.startswith("[demo model]")
        measured[session_id] = counter.count()
    print(f"writes of a small turn: fresh {measured['fresh']}, {chunks} chunks {measured['long']}")
    assert measured["long"] == measured["fresh"] == 2  # the claim and the commit


def test_turn_writes_do_not_grow_with_the_chunks(store, counter) -> None:
    measured = {}
    for answers in (0, 1, 3):
        session_id = f"s{answers}"
        grow(store, session_id, answers, NOW)
        counter.clear()
        small_turn(store, session_id, NOW + dt.timedelta(seconds=1))
        measured[len(expiries(session_id)[1])] = counter.count()
    assert list(measured) == [0, 4, 13]
    assert set(measured.values()) == {2}, measured


def test_chunks_slide_only_when_their_expiry_would_fall_before_the_session(store, counter) -> None:
    grow(store, "slide", 2, NOW)  # 9 chunks, written with 1.5 TTL
    session, chunks = expiries("slide")
    assert session == NOW + dt.timedelta(seconds=TTL)
    assert set(chunks) == {NOW + dt.timedelta(seconds=TTL * 1.5)}
    # Before half a TTL has passed, the chunks still outlive the session's new expiry.
    almost = NOW + dt.timedelta(seconds=TTL / 2)
    counter.clear()
    small_turn(store, "slide", almost)
    assert counter.count("chunk") == 0
    session, chunks = expiries("slide")
    assert session == almost + dt.timedelta(seconds=TTL) <= min(chunks)
    # Past it they would not: this turn slides every one of them, once.
    later = almost + dt.timedelta(seconds=1)
    counter.clear()
    small_turn(store, "slide", later)
    assert counter.count("chunk") == 9
    session, chunks = expiries("slide")
    assert session == later + dt.timedelta(seconds=TTL)
    assert set(chunks) == {later + dt.timedelta(seconds=TTL * 1.5)}
    counter.clear()
    small_turn(store, "slide", later + dt.timedelta(seconds=1))
    assert counter.count("chunk") == 0


def test_no_chunk_ever_expires_before_its_session(store) -> None:
    # Turns at uneven gaps, some sealing chunks, some not: after each, every chunk
    # outlives the session document (so a TTL sweep that takes a chunk has passed the
    # session's expiry too, and readers treat the session as expired by then).
    at = NOW
    for n, gap in enumerate((0, 100, 250, 40, 310, 5, 299, 301, 590, 1, 450)):
        at += dt.timedelta(seconds=gap)
        claim = store.claim("inv", at, at + dt.timedelta(seconds=60))
        assert not claim.new_session or n == 0  # every gap is shorter than the TTL
        size = 700_000 if n % 3 == 0 else 50
        store.commit(claim, [item(f"{n}" + "b" * size)], at)
        session, chunks = expiries("inv")
        assert chunks and min(chunks) >= session, (n, session, min(chunks))


def test_a_claim_longer_than_the_ttl_keeps_the_chunks_alive_too(counter) -> None:
    short = HistoryStore(counter.client, ttl_seconds=10, timeout_seconds=10)
    grow(short, "short", 1, NOW)  # 4 chunks until NOW + 15 s, the session NOW + 10 s
    until = NOW + dt.timedelta(seconds=60)
    counter.clear()
    short.claim("short", NOW + dt.timedelta(seconds=1), until)
    assert counter.count("chunk") == 4
    session, chunks = expiries("short")
    assert session == until <= min(chunks)


@pytest.mark.parametrize("change", ["no record", "record of another commit"])
def test_chunks_of_a_session_without_a_trusted_record_slide(store, counter, change) -> None:
    # A session written before the record existed, or last committed by a version that
    # does not keep it: its chunks are known to expire only with the document.
    grow(store, "old", 1, NOW)
    ref = fs.Client().collection(SESSIONS).document("old")
    if change == "no record":
        ref.update({CHUNK_EXPIRY: fs.DELETE_FIELD})
    else:
        ref.update({LAST_COMMIT: "an older version's commit"})
    counter.clear()
    small_turn(store, "old", NOW + dt.timedelta(seconds=1))
    assert counter.count("chunk") == 4
