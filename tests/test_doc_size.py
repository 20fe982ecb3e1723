"""The session document stays under Firestore's 1 MiB (issue 20, item 12).

Its large fields (the history tail, the running summary, a paused run's state and
pending calls, the decision log) are each bounded, the bounds sum to less than the limit
with room to spare, and a commit with every field at its bound lands on the emulator,
which enforces the limit as Firestore does.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs

from agent.base.clock import utc_now
from agent.runtime import context
from agent.store.doc_size import DOC_LIMIT_BYTES, clip_utf8, document_size, value_size
from agent.store.history import CHUNK_BYTES, HistoryStore, Summary, doc_id
from agent.store.paused_runs import (
    MAX_DECISION_LOG_BYTES,
    MAX_DECISIONS,
    MAX_PENDING_BYTES,
    MAX_STATE_BYTES,
    PausedRun,
    PendingCall,
    StateTooLarge,
    logged,
)
from agent.store.schema import MAX_OTHER_FIELDS_BYTES, MAX_SUMMARY_BYTES, SESSIONS
from agent.store.summary_provenance import MAX_MODEL_CHARS, SummaryProvenance
from local.emulators import FirestoreEmulator
from tests.support.openapi_contract import assert_conforms

MARGIN = 64 * 1024
"""Room left under the limit at every bound: field names and sizes we did not foresee."""
WIDE = "\U0001f600"  # four bytes in UTF-8: the most a character costs
OWNER = "p" * 128  # the longest principal name (auth/modes.py)
SECOND = dt.timedelta(seconds=1)


def test_the_bounds_sum_to_less_than_the_limit() -> None:
    total = (
        CHUNK_BYTES
        + MAX_SUMMARY_BYTES
        + MAX_STATE_BYTES
        + MAX_PENDING_BYTES
        + MAX_DECISION_LOG_BYTES
        + MAX_OTHER_FIELDS_BYTES
    )
    assert total <= DOC_LIMIT_BYTES - MARGIN, total
    # The runtime's cap on a summary fits the store's bound, whatever the characters.
    assert context.SUMMARY_MAX_CHARS * len(WIDE.encode()) <= MAX_SUMMARY_BYTES


def _pending(total: int) -> tuple[PendingCall, ...]:
    """Pending calls whose stored form is exactly ``total`` bytes."""
    calls = [PendingCall(f"call_{n:04d}" + "c" * 40, "send_message", "") for n in range(8)]
    base = value_size([call.as_json() for call in calls])
    share, extra = divmod(total - base, len(calls))
    calls = [
        PendingCall(call.call_id, call.tool, "a" * (share + (extra if n == 0 else 0)))
        for n, call in enumerate(calls)
    ]
    assert value_size([call.as_json() for call in calls]) == total
    return tuple(calls)


def _decisions(count: int) -> list[dict[str, object]]:
    at = utc_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        {
            "call_id": f"call_{n:04d}" + "c" * 40,
            "tool": "send_message",
            "approved": n % 2 == 0,
            "reason": WIDE * 500,  # the longest reason the API takes, in wide characters
            "by": OWNER,
            "at": at,
        }
        for n in range(count)
    ]


def test_the_decision_log_keeps_the_newest_that_fit() -> None:
    decisions = _decisions(150)
    log = logged(decisions[:100], decisions[100:])
    assert value_size(log) <= MAX_DECISION_LOG_BYTES
    assert log == decisions[-len(log) :]  # the newest, in order
    assert 10 < len(log) < MAX_DECISIONS
    small = [{"call_id": str(n), "approved": True} for n in range(150)]
    assert logged(small, []) == small[-MAX_DECISIONS:]


def test_a_commit_with_every_field_at_its_bound_lands_under_the_limit(
    firestore: FirestoreEmulator,
) -> None:
    client = fs.Client()
    store = HistoryStore(client, ttl_seconds=600, timeout_seconds=20)
    now = utc_now()
    # The tail one byte short of a chunk: the first turn fills all but 64 bytes of it...
    first = {"role": "user", "content": "x" * (CHUNK_BYTES - 64 - 29)}
    claim = store.claim("full", now, now + 30 * SECOND, OWNER)
    store.commit(claim, [first], now)
    # ... and the second all but one, with a summary, a pause and decisions at their bounds.
    claim = store.claim("full", now, now + 30 * SECOND, OWNER)
    assert len(claim.tail) == CHUNK_BYTES - 64
    summary = Summary(
        WIDE * (MAX_SUMMARY_BYTES // 4),
        1,
        CHUNK_BYTES - 64,
        SummaryProvenance(10**6, now, "m" * MAX_MODEL_CHARS),
    )
    paused = PausedRun(
        pause_id="p" * 16,
        pending=_pending(MAX_PENDING_BYTES),
        fingerprint="f" * 64,
        paused_at=now,
        state=os.urandom(MAX_STATE_BYTES),  # incompressible: as large as it may be
        attempts=10**6,
        folded=10**6,
    )
    store.commit(
        claim,
        [{"role": "user", "content": "y" * 34}],
        now,
        summary=summary,
        paused=paused,
        decisions=_decisions(MAX_DECISIONS),
        token_ratio=1.2345,
    )
    snapshot = client.collection(SESSIONS).document(doc_id("full")).get()
    data = snapshot.to_dict()
    assert data is not None and len(data["tail"]) == CHUNK_BYTES - 1
    size = document_size(snapshot.reference.path, data)
    assert size <= DOC_LIMIT_BYTES - MARGIN, size
    history = store.load("full", utc_now(), OWNER)
    assert history is not None and len(history.pending) == 8
    assert history.summary == summary.text
    assert 0 < len(history.approvals) < MAX_DECISIONS  # the oldest made room
    assert history.approvals[-1]["call_id"] == f"call_{MAX_DECISIONS - 1:04d}" + "c" * 40


def test_a_summary_past_its_bound_is_cut_by_the_store(firestore: FirestoreEmulator) -> None:
    store = HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=10)
    now = utc_now()
    claim = store.claim("long-summary", now, now + 10 * SECOND)
    store.commit(claim, [{"role": "user", "content": "hi"}], now)
    claim = store.claim("long-summary", now, now + 10 * SECOND)
    store.commit(claim, [], now, summary=Summary(WIDE * MAX_SUMMARY_BYTES, 1, 0))
    history = store.load("long-summary", utc_now())
    assert history is not None and history.summary is not None
    assert history.summary == clip_utf8(WIDE * MAX_SUMMARY_BYTES, MAX_SUMMARY_BYTES)
    assert len(history.summary.encode()) == MAX_SUMMARY_BYTES


def test_pending_calls_past_their_bound_fail_the_pause_and_store_nothing(
    firestore: FirestoreEmulator,
) -> None:
    store = HistoryStore(fs.Client(), ttl_seconds=600, timeout_seconds=10)
    now = utc_now()
    claim = store.claim("too-many", now, now + 10 * SECOND)
    store.commit(claim, [{"role": "user", "content": "hi"}], now)
    claim = store.claim("too-many", now, now + 10 * SECOND)
    paused = PausedRun("p", _pending(MAX_PENDING_BYTES + 1), "f", now, b"state")
    with pytest.raises(StateTooLarge):
        store.commit(claim, [{"role": "assistant", "content": "paused"}], now, paused=paused)
    store.release(claim)
    history = store.load("too-many", utc_now())
    assert history is not None and history.items == [{"role": "user", "content": "hi"}]
    assert history.pending == ()


def test_a_pause_with_arguments_past_the_bound_is_502_and_changes_nothing(
    make_client: Callable[..., FlaskClient], firestore: FirestoreEmulator
) -> None:
    """Over HTTP with the demo model: the canonical arguments keep each wide character
    as its four UTF-8 bytes, so 20,000 of them make 80 kB of arguments."""
    client = make_client()
    assert client.post("/chat", json={"message": "hi", "session_id": "wide"}).status_code == 200
    message = f'send "{WIDE * 20_000}" to alice'
    response = client.post("/chat", json={"message": message, "session_id": "wide"})
    assert response.status_code == 502, response.get_json()
    assert response.get_json()["error"]["code"] == "approval_state_too_large"
    assert_conforms("POST", "/chat", 502, response.get_json(), response.headers)
    session = client.get("/sessions/wide").get_json()
    assert session["turns"] == 1 and session["pending_approvals"] == []
    # The session is free again: the next turn runs.
    assert client.post("/chat", json={"message": "hi", "session_id": "wide"}).status_code == 200
