"""Issue 20, "Under a lying network" (items 13-16): each case as the review ran it,
counted over repeated tries (the review's failures were 5 of 5 or 10 of 10; these
expect 0 of 10).

A fault proxy (``tests/support/fault_proxy.py``) sits between one in-process server and
the Firestore emulator; a second server talks to the emulator directly. Faults are
aimed at the n-th write of a request (``FaultProxy.arm_write``): the writes of each
request are listed in ``tests/test_fault_matrix.py``'s output (a plain turn: claim 0,
commit 1, fence 2; with an Idempotency-Key the key's record comes first; a resume:
claim 0, guard create 1, guard finish 2, commit 3, fence 4; a delete: the session 0,
the keys' records 1, the tool runs 2).
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs

from agent.store.history import doc_id
from agent.store.schema import IDEMPOTENCY, SESSIONS, TOOL_RUNS, TTL_FIELD
from tests.support.fault_fixtures import PairBuilder, sent, users
from tests.support.fault_proxy import FaultProxy

Build = Callable[..., FlaskClient]
TRIES = 10
TIMEOUT = 1.0
"""FIRESTORE_TIMEOUT_SECONDS of the server behind the proxy: short, so a held write
times out quickly."""


def sid() -> str:
    return "s" + secrets.token_hex(6)


def pause(client: FlaskClient, session_id: str, word: str, **headers: str) -> str:
    body = {"message": f'send "{word}" to alice', "session_id": session_id}
    response = client.post("/chat", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    call_id: str = response.get_json()["pending_approvals"][0]["call_id"]
    PAUSE_OF[call_id] = response.get_json()["pause_id"]
    return call_id


PAUSE_OF: dict[str, str] = {}
"""The pause each call id (random, so unique) was made in: decisions name it."""


def approval(call_id: str) -> dict[str, Any]:
    """The body that approves ``call_id`` in its pause."""
    return {"pause_id": PAUSE_OF[call_id], "decisions": [{"call_id": call_id, "approve": True}]}


def decide(client: FlaskClient, session_id: str, call_id: str) -> Any:
    return client.post(f"/sessions/{session_id}/approvals", json=approval(call_id))


def wait_for(rule: Any, seconds: float) -> None:
    """Until the fault's hold is over and the network is honest again."""
    assert rule.fired.is_set()
    time.sleep(max(0.0, rule.fired_at + seconds + 0.3 - time.monotonic()))


def never_lands(proxy: FaultProxy, write: int) -> None:
    """The ``write``-th write never reaches Firestore (held past the timeout, then its
    connection cut), and the write after it, the fence, lands with its reply lost."""
    proxy.arm_write(write, "hold_request", seconds=TIMEOUT + 0.3, then="cut")
    proxy.arm_write(write + 1, "reset")


# -- 13. A lost fence reply must not turn an unstored turn into a 200 -----------------------


@pytest.mark.parametrize("kind", ["second turn", "keyed turn", "first turn"])
def test_a_commit_that_never_lands_whose_fence_reply_is_lost_is_not_a_200(
    build_pair: PairBuilder, proxy: FaultProxy, kind: str
) -> None:
    through, direct = build_pair(TIMEOUT)
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        headers = {"Idempotency-Key": word} if kind == "keyed turn" else {}
        if kind != "first turn":
            assert direct.post("/chat", json={"message": "one", "session_id": session_id})
        never_lands(proxy, 2 if kind == "keyed turn" else 1)
        body = {"message": word, "session_id": session_id}
        response = through.post("/chat", json=body, headers=headers)
        stored = word in users(direct, session_id)
        after = direct.post("/chat", json=body, headers=headers)  # no turn runs now
        outcomes[f"{response.status_code} stored={stored} then {after.status_code}"] += 1
        proxy.disarm_writes()
    assert outcomes == {"503 stored=False then 200": TRIES}, outcomes


def test_a_resume_whose_commit_never_lands_and_fence_reply_is_lost_loses_no_decision(
    build_pair: PairBuilder, proxy: FaultProxy, outbox: Path
) -> None:
    through, direct = build_pair(TIMEOUT)
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        call_id = pause(direct, session_id, word)
        never_lands(proxy, 3)  # claim, guard create, guard finish, commit
        response = through.post(
            f"/sessions/{session_id}/approvals",
            json=approval(call_id),
        )
        pending = direct.get(f"/sessions/{session_id}").get_json()["pending_approvals"]
        again = decide(direct, session_id, call_id)  # the decision can be sent again
        logged = direct.get(f"/sessions/{session_id}").get_json()["approvals"]
        outcomes[
            f"{response.status_code} pending={bool(pending)} then {again.status_code}"
            f" logged={len(logged)} ran={sent(outbox, word)}"
        ] += 1
        proxy.disarm_writes()
    assert outcomes == {"503 pending=True then 200 logged=1 ran=1": TRIES}, outcomes


# -- 14. DELETE decides from its own mark, cleans its life, never replays another's key -----


def test_a_delete_whose_reply_is_lost_is_204_and_cleans_its_life(
    build_pair: PairBuilder, proxy: FaultProxy
) -> None:
    through, direct = build_pair(TIMEOUT)
    client = fs.Client()
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        call_id = pause(direct, session_id, word, **{"Idempotency-Key": word})
        assert decide(direct, session_id, call_id).status_code == 200  # a tool run
        proxy.arm_write(0, "reset")  # the delete lands; its reply is lost
        response = through.delete(f"/sessions/{session_id}")
        runs = list(
            client.collection(SESSIONS).document(session_id).collection(TOOL_RUNS).list_documents()
        )
        keys = [s for s in client.collection(IDEMPOTENCY).stream() if word in str(s.to_dict())]
        body = {"message": f'send "{word}" to alice', "session_id": session_id}
        new = direct.post("/chat", json=body, headers={"Idempotency-Key": word})
        replayed = new.headers.get("Idempotent-Replayed") == "true"
        outcomes[f"{response.status_code} runs={len(runs)} keys={len(keys)} {replayed=}"] += 1
    assert outcomes == {"204 runs=0 keys=0 replayed=False": TRIES}, outcomes


def test_a_key_record_left_by_a_deleted_life_never_replays_in_a_new_one(
    build_pair: PairBuilder, proxy: FaultProxy
) -> None:
    through, direct = build_pair(TIMEOUT)
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        body = {"message": word, "session_id": session_id}
        first = direct.post("/chat", json=body, headers={"Idempotency-Key": word})
        assert first.status_code == 200
        # The delete's clean-up of the key records never arrives (best effort: 204).
        proxy.arm_write(1, "hold_request", seconds=TIMEOUT + 0.3, then="cut")
        deleted = through.delete(f"/sessions/{session_id}")
        new = direct.post("/chat", json=body, headers={"Idempotency-Key": word})
        replayed = new.headers.get("Idempotent-Replayed") == "true"
        stored = users(direct, session_id) == [word]  # the new life ran its own turn
        outcomes[f"{deleted.status_code} {new.status_code} {replayed=} {stored=}"] += 1
        proxy.disarm_writes()
    assert outcomes == {"204 200 replayed=False stored=True": TRIES}, outcomes


# -- 15. The tool-run guard outlives every claim of its pause -------------------------------


def sweep(now: dt.datetime) -> int:
    """Firestore's TTL deletion, simulated: every document past its expire_at goes."""
    client = fs.Client()
    gone = 0
    for group in (SESSIONS, TOOL_RUNS, IDEMPOTENCY):
        for snap in client.collection_group(group).stream():
            expire_at = (snap.to_dict() or {}).get(TTL_FIELD)
            if expire_at is not None and expire_at < now:
                snap.reference.delete()
                gone += 1
    return gone


def test_a_guard_is_not_swept_while_a_failed_resume_keeps_its_pause_alive(
    build_pair: PairBuilder, proxy: FaultProxy, outbox: Path
) -> None:
    through, direct = build_pair(TIMEOUT, session_ttl_seconds="3")
    cases = []
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        call_id = pause(direct, session_id, word)
        # The resume runs the tool, then its commit never lands: 503, pause kept.
        proxy.arm_write(3, "hold_request", seconds=TIMEOUT + 0.3, then="cut")
        failed = through.post(
            f"/sessions/{session_id}/approvals",
            json=approval(call_id),
        )
        assert failed.status_code == 503, failed.get_json()
        proxy.disarm_writes()
        cases.append((session_id, word, call_id))
    time.sleep(3.5)  # past every record's TTL; the claims slid the sessions' further
    sweep(dt.datetime.now(dt.UTC))
    outcomes: Counter[str] = Counter()
    for session_id, word, call_id in cases:
        again = decide(direct, session_id, call_id)
        outcomes[f"{again.status_code} ran={sent(outbox, word)}"] += 1
    assert outcomes == {"200 ran=1": TRIES}, outcomes


def test_each_claim_of_a_pause_keeps_its_guards(
    build_pair: PairBuilder, proxy: FaultProxy, outbox: Path
) -> None:
    # Claims end 9 s after their request starts; records last 2 s past their write.
    budget = 9.0
    env = {
        "session_ttl_seconds": "2",
        "function_timeout_seconds": "10",
        "deadline_margin_seconds": "1",
    }
    through, direct = build_pair(TIMEOUT, **env)
    session_id, word = sid(), secrets.token_hex(6)
    call_id = pause(direct, session_id, word)
    # Two resumes run the call (the second finds its record), each failing at its commit
    # (the only write with the model's final answer), which never lands.
    starts = []
    for wait in (2.5, 0.0):
        starts.append(time.monotonic())
        proxy.arm("Done: sent to", "hold_request", seconds=TIMEOUT + 0.3, then="cut")
        failed = decide(through, session_id, call_id)
        assert failed.status_code in (503, 504), failed.get_json()
        time.sleep(wait)
    # Past the first claim's end, before the second's: only the second keeps the pause.
    time.sleep(max(0.0, starts[0] + budget + 0.5 - time.monotonic()))
    sweep(dt.datetime.now(dt.UTC))
    assert time.monotonic() < starts[1] + budget - 1.0, "too slow to test the window"
    again = decide(direct, session_id, call_id)
    assert (again.status_code, sent(outbox, word)) == (200, 1), again.get_json()


@pytest.mark.parametrize("fault", ["reset", "hold_reply"])
def test_a_kept_guard_whose_reply_is_lost_or_late_still_runs_its_call_once(
    build_pair: PairBuilder, proxy: FaultProxy, outbox: Path, fault: str
) -> None:
    """The write that makes a pause's guards last as long as a retried resume's claim
    (``keep``, the resume's second write, after its claim): its reply lost or held past
    the timeout, the resume either goes on (the write is idempotent) or answers 503
    before any tool runs; deciding again then answers, and the call ran once in all."""
    through, direct = build_pair(TIMEOUT, session_ttl_seconds="3")
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        call_id = pause(direct, session_id, word)
        # A first resume runs the tool, then its commit never lands: 503, pause kept,
        # and its guard now expires before the next claim ends.
        proxy.arm_write(3, "hold_request", seconds=TIMEOUT + 0.3, then="cut")
        failed = decide(through, session_id, call_id)
        proxy.disarm_writes()
        before = guard_expiry(session_id)
        if fault == "reset":
            proxy.arm_write(1, "reset")
        else:
            proxy.arm_write(1, "hold_reply", seconds=2 * TIMEOUT + 0.3)
        retried = decide(through, session_id, call_id)
        proxy.disarm_writes()
        kept = guard_expiry(session_id) > before  # the faulted write was the keep, and landed
        final = retried if retried.status_code == 200 else decide(direct, session_id, call_id)
        outcomes[
            f"{failed.status_code} {retried.status_code} kept={kept}"
            f" then {final.status_code} ran={sent(outbox, word)}"
        ] += 1
    # A lost reply: the client writes it again and the resume goes on. A late one: 503
    # before the tool, and the next decision answers.
    retried = {"reset": 200, "hold_reply": 503}[fault]
    assert outcomes == {f"503 {retried} kept=True then 200 ran=1": TRIES}, outcomes


def guard_expiry(session_id: str) -> dt.datetime:
    """When the session's one tool-run record expires."""
    runs = fs.Client().collection(SESSIONS).document(doc_id(session_id)).collection(TOOL_RUNS)
    [run] = list(runs.stream())
    expire_at: dt.datetime = run.get(TTL_FIELD)
    return expire_at


# -- 16. A write recognises itself on re-read ----------------------------------------------


@pytest.mark.parametrize("write", ["claim", "key record"])
def test_a_create_whose_reply_is_lost_is_not_409_to_its_own_request(
    build_pair: PairBuilder, proxy: FaultProxy, write: str
) -> None:
    through, direct = build_pair(TIMEOUT)
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        headers = {"Idempotency-Key": word} if write == "key record" else {}
        proxy.arm_write(0, "reset")  # the first write of the request: the claim, the key
        body = {"message": word, "session_id": session_id}
        response = through.post("/chat", json=body, headers=headers)
        outcomes[f"{response.status_code} stored={users(direct, session_id) == [word]}"] += 1
    assert outcomes == {"200 stored=True": TRIES}, outcomes


def test_a_guard_create_held_past_the_timeout_is_503_and_the_tool_did_not_run(
    build_pair: PairBuilder, proxy: FaultProxy, outbox: Path
) -> None:
    through, direct = build_pair(TIMEOUT)
    outcomes: Counter[str] = Counter()
    for _ in range(TRIES):
        session_id, word = sid(), secrets.token_hex(6)
        call_id = pause(direct, session_id, word)
        # The guard's create, and everything after it on that connection, is held past
        # two timeouts (the create and the re-read that checks for it), then cut.
        proxy.arm_write(1, "hold_request", seconds=2 * TIMEOUT + 0.5, then="cut")
        response = decide(through, session_id, call_id)
        ran = sent(outbox, word)
        proxy.disarm_writes()
        again = decide(direct, session_id, call_id)
        outcomes[f"{response.status_code} ran={ran} then {again.status_code}"] += 1
    assert outcomes == {"503 ran=0 then 200": TRIES}, outcomes
