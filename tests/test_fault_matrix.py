"""The fault matrix: every Firestore write a turn, a resume and a delete make, each
with its reply lost and, separately, held past the timeout (issue 20).

One server talks to the Firestore emulator through the fault proxy
(``tests/support/fault_proxy.py``), a second one directly. Each scenario is run once
without a fault to enumerate its writes (every write is one gRPC ``Commit``, which the
proxy counts: ``grpc_writes.py``), so a write added to a scenario later joins the
matrix by itself. Then, for each write in order and each fault, the scenario runs on a
fresh session with that one write broken, and the invariants are checked with the
direct server once the network is honest again:

* no 500;
* a 200 (204) means stored (deleted): the message is in the history once, the decision
  is logged, the session is gone with its keys and tool runs;
* a decision is logged or refused, never lost: after a failed resume the decision can
  be sent again and is then logged;
* a tool runs at most once (the outbox);
* 409 only while a turn runs: once the request answered, a retry with the same
  Idempotency-Key and a new turn on the session are not 409 (``approval_pending``
  excepted, while a pause is stored);
* a key record of a deleted life never replays in a new one.

A lost reply: the write lands, the proxy drops the reply and resets the connection
(the client retries). A held reply: the write lands, every reply on that connection
waits ``HOLD`` seconds, past ``FIRESTORE_TIMEOUT_SECONDS`` (``TIMEOUT``) but within
two, so finding out the outcome can succeed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from google.cloud import firestore as fs
from google.cloud.firestore_v1.base_query import FieldFilter

from agent.store.schema import IDEMPOTENCY, SESSIONS, TOOL_RUNS
from tests.support.fault_fixtures import PairBuilder, sent, users
from tests.support.fault_proxy import FaultProxy, Rule
from tests.support.grpc_writes import label

Build = Callable[..., FlaskClient]
TIMEOUT = 1.5
HOLD = 2.3
FAULTS = ("lose", "hold")


@dataclass
class Case:
    """One run of a scenario: the ids it used and what the faulted request answered."""

    session_id: str
    key: str
    status: int = 0
    body: Any = None
    call_id: str = ""
    pause_id: str = ""


@pytest.fixture
def pair(build_pair: PairBuilder) -> tuple[FlaskClient, FlaskClient]:
    """(through the proxy, direct), both with the acting tool's outbox."""
    return build_pair(TIMEOUT)


def run_matrix(
    proxy: FaultProxy,
    prepare: Callable[[str], Case],
    act: Callable[[Case], tuple[int, Any]],
    check: Callable[[Case, str], list[str]],
) -> None:
    """Enumerate the writes of ``act``, then break each in turn; fail with a table of
    every case that broke an invariant."""
    case = prepare("clean")
    before = len(proxy.writes)
    case.status, case.body = act(case)
    writes = proxy.writes[before:]
    problems = check(case, "none")
    assert not problems, problems
    names = [f"{i}:{label(w)}" for i, w in enumerate(writes)]
    print(f"{len(writes)} writes: {names}")
    assert writes, "the scenario made no write through the proxy"
    failures: list[str] = []
    for index, name in enumerate(names):
        for fault in FAULTS:
            case = prepare(f"{index}{fault[0]}")
            if fault == "lose":
                rule: Rule = proxy.arm_write(index, "reset")
            else:
                rule = proxy.arm_write(index, "hold_reply", seconds=HOLD)
            case.status, case.body = act(case)
            if rule.fired.is_set():
                time.sleep(max(0.0, rule.fired_at + HOLD + 0.3 - time.monotonic()))
            else:  # an earlier step took another path: that write never came
                proxy.disarm_writes()
            problems = check(case, fault)
            print(f"  {name} {fault}: {case.status} {'; '.join(problems) or 'ok'}")
            failures += [f"{name} {fault}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


def marker() -> str:
    return "w" + secrets.token_hex(6)


# -- a turn --------------------------------------------------------------------------


@pytest.mark.parametrize("first", [False, True], ids=["next-turn", "first-turn"])
def test_every_write_of_a_turn_lost_or_held(
    pair: tuple[FlaskClient, FlaskClient], proxy: FaultProxy, first: bool
) -> None:
    through, direct = pair
    word = marker()

    def prepare(tag: str) -> Case:
        case = Case(f"t{tag}-{secrets.token_hex(4)}", f"k-{secrets.token_hex(6)}")
        if not first:
            body = {"message": "before", "session_id": case.session_id}
            assert direct.post("/chat", json=body).status_code == 200
        return case

    def act(case: Case) -> tuple[int, Any]:
        body = {"message": f"{word} {case.key}", "session_id": case.session_id}
        response = through.post("/chat", json=body, headers={"Idempotency-Key": case.key})
        return response.status_code, response.get_json()

    def check(case: Case, fault: str) -> list[str]:
        problems: list[str] = []
        message = f"{word} {case.key}"
        stored = users(direct, case.session_id).count(message)
        if case.status not in (200, 503, 504):
            problems.append(f"answered {case.status} {case.body}")
        if case.status == 200 and stored != 1:
            problems.append(f"200 but stored {stored} times")
        if stored > 1:
            problems.append(f"stored {stored} times")
        # No turn runs now: the same request again is never 409, and it is stored once.
        body = {"message": message, "session_id": case.session_id}
        again = direct.post("/chat", json=body, headers={"Idempotency-Key": case.key})
        if again.status_code != 200:
            problems.append(f"retry with the key: {again.status_code} {again.get_json()}")
        elif users(direct, case.session_id).count(message) != 1:
            problems.append("retry with the key did not leave the turn stored once")
        other = {"message": "after", "session_id": case.session_id}
        if (status := direct.post("/chat", json=other).status_code) != 200:
            problems.append(f"a new turn afterwards: {status}")
        return problems

    run_matrix(proxy, prepare, act, check)


# -- a resume ------------------------------------------------------------------------


def test_every_write_of_a_resume_lost_or_held(
    pair: tuple[FlaskClient, FlaskClient], proxy: FaultProxy, outbox: Path
) -> None:
    through, direct = pair

    def prepare(tag: str) -> Case:
        case = Case(f"r{tag}-{secrets.token_hex(4)}", f"k-{secrets.token_hex(6)}")
        message = f'send "{case.key}" to alice'
        response = direct.post("/chat", json={"message": message, "session_id": case.session_id})
        assert response.status_code == 200, response.get_json()
        case.call_id = response.get_json()["pending_approvals"][0]["call_id"]
        case.pause_id = response.get_json()["pause_id"]
        return case

    def decide(client: FlaskClient, case: Case) -> Any:
        decisions = [{"call_id": case.call_id, "approve": True}]
        body = {"pause_id": case.pause_id, "decisions": decisions}
        return client.post(f"/sessions/{case.session_id}/approvals", json=body)

    def act(case: Case) -> tuple[int, Any]:
        response = decide(through, case)
        return response.status_code, response.get_json()

    def logged(case: Case) -> int:
        session = direct.get(f"/sessions/{case.session_id}").get_json()
        return sum(d["call_id"] == case.call_id for d in session["approvals"])

    def check(case: Case, fault: str) -> list[str]:
        problems: list[str] = []
        if case.status not in (200, 503, 504):
            problems.append(f"answered {case.status} {case.body}")
        runs = sent(outbox, case.key)
        if case.status == 200 and (logged(case) != 1 or runs != 1):
            problems.append(f"200 but logged {logged(case)} times, tool ran {runs} times")
        if case.status != 200:
            # Logged, or refused and open to the same decision again; never lost.
            again = decide(direct, case)
            if again.status_code == 409:
                if again.get_json()["error"]["code"] != "approval_not_pending":
                    problems.append(f"decision again: 409 {again.get_json()}")
            elif again.status_code != 200:
                problems.append(f"decision again: {again.status_code} {again.get_json()}")
            if logged(case) != 1:
                problems.append(f"decision logged {logged(case)} times after a retry")
        if (runs := sent(outbox, case.key)) > 1:
            problems.append(f"the tool ran {runs} times")
        session = direct.get(f"/sessions/{case.session_id}").get_json()
        if session["pending_approvals"]:
            problems.append("still pending after the decision was logged")
        other = {"message": "after", "session_id": case.session_id}
        if (status := direct.post("/chat", json=other).status_code) != 200:
            problems.append(f"a new turn afterwards: {status}")
        return problems

    run_matrix(proxy, prepare, act, check)


# -- a delete ------------------------------------------------------------------------


def test_every_write_of_a_delete_lost_or_held(
    pair: tuple[FlaskClient, FlaskClient], proxy: FaultProxy, outbox: Path
) -> None:
    through, direct = pair
    client = fs.Client()

    def prepare(tag: str) -> Case:
        """A session with a key's record and a tool run."""
        case = Case(f"d{tag}-{secrets.token_hex(4)}", f"k-{secrets.token_hex(6)}")
        body = {"message": f'send "{case.key}" to bob', "session_id": case.session_id}
        response = direct.post("/chat", json=body, headers={"Idempotency-Key": case.key})
        assert response.status_code == 200, response.get_json()
        call_id = response.get_json()["pending_approvals"][0]["call_id"]
        decisions = {
            "pause_id": response.get_json()["pause_id"],
            "decisions": [{"call_id": call_id, "approve": True}],
        }
        decided = direct.post(f"/sessions/{case.session_id}/approvals", json=decisions)
        assert decided.status_code == 200, decided.get_json()
        return case

    def act(case: Case) -> tuple[int, Any]:
        response = through.delete(f"/sessions/{case.session_id}")
        return response.status_code, response.get_json()

    def leftovers(case: Case) -> list[str]:
        keys = client.collection(IDEMPOTENCY).where(
            filter=FieldFilter("session_id", "==", case.session_id)
        )
        runs = client.collection(SESSIONS).document(case.session_id).collection(TOOL_RUNS)
        found = [f"key record {s.id[:8]}" for s in keys.stream()]
        return found + [f"tool run {r.id}" for r in runs.list_documents()]

    def check(case: Case, fault: str) -> list[str]:
        problems: list[str] = []
        if case.status not in (204, 503):
            problems.append(f"answered {case.status} {case.body}")
        if case.status == 204:
            if direct.get(f"/sessions/{case.session_id}").status_code != 404:
                problems.append("204 but the session is still there")
            if left := leftovers(case):
                problems.append(f"204 but left {left}")
        else:
            again = direct.delete(f"/sessions/{case.session_id}")
            if again.status_code not in (204, 404):
                problems.append(f"delete again: {again.status_code}")
            elif left := leftovers(case):
                problems.append(f"deleted again, but left {left}")
        # A new life of the id never gets the old life's reply for the same key.
        body = {"message": f'send "{case.key}" to bob', "session_id": case.session_id}
        new = direct.post("/chat", json=body, headers={"Idempotency-Key": case.key})
        if new.status_code != 200 or new.headers.get("Idempotent-Replayed") == "true":
            problems.append(f"a new life with the old key: {new.status_code} replayed")
        return problems

    run_matrix(proxy, prepare, act, check)
