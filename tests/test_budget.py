"""A session's running usage totals, and ``BUDGET_USD_PER_PRINCIPAL_PER_DAY``: real turns
against the demo model over HTTP, on the store under test (Firestore on the emulator
where it is installed), with the budget's clock injected so the UTC day can roll over."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.api.app import create_app
from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.service import Service, build_service
from agent.turn.budget import seconds_to_next_day
from local.demo_model import DemoModelServer
from tests.support.constants import MODEL
from tests.support.openapi_contract import assert_conforms
from tests.support.stores import idempotency_records

PRICES = json.dumps({MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}})
PRINCIPAL = "local"  # AUTH_MODE=none: every caller is this principal
TOTALS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens")


class Clock:
    """The budget's clock, moved by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


Build = Callable[..., tuple[FlaskClient, Service]]


@pytest.fixture
def build(settings_env: dict[str, str]) -> Iterator[Build]:
    """A fresh service and app on the test's store (the same one each call: a restart),
    with prices, and the budget's ``clock``."""
    services: list[Service] = []

    def make(
        clock: Callable[[], dt.datetime] = utc_now, **overrides: Any
    ) -> tuple[FlaskClient, Service]:
        env = settings_env | {"MODEL_PRICES": PRICES}
        env |= {key.upper(): str(value) for key, value in overrides.items()}
        service = build_service(Settings.from_env(env), clock=clock)
        services.append(service)
        return create_app(service).test_client(), service

    yield make
    for service in services:
        service.close()


def chat(
    client: FlaskClient,
    message: str = "hi",
    session_id: str | None = None,
    stream: bool | None = None,
    **kw: Any,
) -> Any:
    body: dict[str, Any] = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    if stream is not None:
        body["stream"] = stream
    return client.post("/chat", json=body, **kw)


def one_turn_cost(build: Build) -> float:
    """What a first turn saying "hi" costs (no budget: nothing is recorded)."""
    client, _ = build()
    response = chat(client)
    assert response.status_code == 200
    cost: float = response.get_json()["usage"]["cost_usd"]
    assert cost > 0
    return cost


def test_session_totals_are_the_sum_of_its_turns_and_survive_a_restart(
    build: Build, model: DemoModelServer
) -> None:
    client, _ = build()
    first = chat(client).get_json()
    session_id = first["session_id"]
    usages = [first["usage"]]
    for message in ("What is 12 * (3 + 4)?", "and again?"):
        response = chat(client, message, session_id)
        assert response.status_code == 200
        usages.append(response.get_json()["usage"])
    assert usages[1]["requests"] == 2  # a tool call and the answer

    def expect(totals: dict[str, Any], turns: list[dict[str, Any]]) -> None:
        for name in TOTALS:
            assert totals[name] == sum(u[name] for u in turns), name
        assert totals["cost_usd"] == pytest.approx(sum(u["cost_usd"] for u in turns))

    got = client.get(f"/sessions/{session_id}")
    assert got.status_code == 200
    assert_conforms("GET", "/sessions/{session_id}", 200, got.get_json(), got.headers)
    expect(got.get_json()["usage"], usages)

    model.control(fail_status=500, fail_count=-1)  # a failed turn adds nothing
    assert chat(client, "fails", session_id).status_code == 502
    model.reset()

    restarted, _ = build()  # a new process on the same store
    expect(restarted.get(f"/sessions/{session_id}").get_json()["usage"], usages)
    usages.append(chat(restarted, "once more", session_id).get_json()["usage"])
    expect(restarted.get(f"/sessions/{session_id}").get_json()["usage"], usages)


def test_past_the_budget_a_turn_is_refused_without_a_model_call_until_the_next_day(
    build: Build, model: DemoModelServer
) -> None:
    cost = one_turn_cost(build)
    clock = Clock(dt.datetime(2031, 5, 6, 23, 59, 58, 400_000, tzinfo=dt.UTC))
    client, service = build(clock, budget_usd_per_principal_per_day=1.5 * cost)
    assert chat(client).status_code == 200  # spent 0
    second = chat(client)
    assert second.status_code == 200  # spent 1 turn < 1.5
    day = clock.now.date()
    assert service.spend.spent(PRINCIPAL, day) == pytest.approx(2 * cost)

    calls = model.request_count
    refused = chat(client, session_id="refused-new")
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["Retry-After"] == "2"  # 1.6 s to midnight, rounded up
    assert int(refused.headers["Retry-After"]) == seconds_to_next_day(clock.now)
    assert_conforms("POST", "/chat", 429, refused.get_json(), refused.headers)
    follow_up = chat(client, "more", second.get_json()["session_id"])
    assert follow_up.status_code == 429
    streamed = chat(client, stream=True)
    assert streamed.status_code == 429 and streamed.mimetype == "application/json"
    keyed = chat(client, "keyed", headers={"Idempotency-Key": "k-1"})
    assert keyed.status_code == 429
    assert model.request_count == calls  # no model call at all
    # Nothing stored: no session, no spend, the key given up (a retry may run tomorrow).
    assert client.get("/sessions/refused-new").status_code == 404
    assert service.store.current_generation("refused-new", utc_now()) is None
    assert client.get(f"/sessions/{second.get_json()['session_id']}").get_json()["turns"] == 1
    assert [r for r in idempotency_records(client) if r["state"] == "done"] == []
    assert service.spend.spent(PRINCIPAL, day) == pytest.approx(2 * cost)

    restarted, _ = build(clock, budget_usd_per_principal_per_day=1.5 * cost)
    assert chat(restarted).status_code == 429  # the spend is in the store, not the process

    clock.now = dt.datetime(2031, 5, 7, 0, 0, 0, tzinfo=dt.UTC)  # the UTC day rolls over
    assert chat(client, session_id="refused-new").status_code == 200
    assert model.request_count > calls
    assert service.spend.spent(PRINCIPAL, clock.now.date()) == pytest.approx(cost)


def test_retry_after_is_the_time_to_the_next_utc_midnight() -> None:
    def at(text: str) -> int:
        return seconds_to_next_day(dt.datetime.fromisoformat(text))

    assert at("2031-05-06T00:00:00+00:00") == 86400
    assert at("2031-05-06T23:59:59.999+00:00") == 1
    assert at("2031-05-06T12:00:00.5+00:00") == 43200  # 43199.5, rounded up
    assert at("2031-05-06T23:30:00-02:00") == 81000  # 01:30 UTC on the 7th


def test_the_budget_must_be_positive(settings_env: dict[str, str]) -> None:
    from agent.base.settings import SettingsError

    for bad in ("0", "-1", "nan", "inf", "lots"):
        with pytest.raises(SettingsError, match="BUDGET_USD_PER_PRINCIPAL_PER_DAY"):
            Settings.from_env(settings_env | {"BUDGET_USD_PER_PRINCIPAL_PER_DAY": bad})
    assert Settings.from_env(settings_env).budget_usd_per_principal_per_day is None


def run_concurrently(
    client: FlaskClient, count: int, prefix: str, stagger: float = 0.0
) -> list[Any]:
    """``count`` turns on as many sessions, started together (the n-th ``n * stagger``
    seconds later), each on a thread of its own."""
    start = threading.Barrier(count)

    def one(n: int) -> Any:
        start.wait()
        time.sleep(n * stagger)
        return chat(client, session_id=f"{prefix}-{n}")

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("stagger", [0.0, 0.06], ids=["burst", "spread"])
def test_fifty_concurrent_turns_of_one_principal_see_no_contention(
    build: Build, model: DemoModelServer, capsys: pytest.CaptureFixture[str], stagger: float
) -> None:
    cost = one_turn_cost(build)
    clock = Clock(utc_now())
    budget = 20.5 * cost
    client, service = build(clock, budget_usd_per_principal_per_day=budget)
    began = time.monotonic()
    # All at once; or overlapping but spread, so that (as a rule) the later ones start
    # after the budget is reached and both outcomes occur.
    responses = run_concurrently(client, 50, "many", stagger)
    seconds = time.monotonic() - began
    statuses = sorted(r.status_code for r in responses)
    passed = [r.get_json()["usage"]["cost_usd"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    with capsys.disabled():
        print(
            f"\n50 turns {stagger} s apart: {len(passed)} x 200, {len(refused)} x 429"
            f" in {seconds:.1f} s"
        )
    assert set(statuses) <= {200, 429}, statuses  # never 409, 500, 503
    for response in refused:
        assert response.get_json()["error"]["code"] == "budget_exceeded"
    # Refused only once the budget was reached: at least 21 turns had committed.
    assert len(passed) >= 21 or not refused
    spent = service.spend.spent(PRINCIPAL, clock.now.date())
    assert spent == pytest.approx(sum(passed))
    assert chat(client).status_code == (429 if spent >= budget else 200)


def test_overshoot_is_at_most_the_turns_already_running(
    build: Build, model: DemoModelServer
) -> None:
    cost = one_turn_cost(build)
    clock = Clock(utc_now())
    budget = 2.5 * cost
    client, service = build(clock, budget_usd_per_principal_per_day=budget)
    model.control(delay_seconds=1.5)  # every turn checks before any of them commits
    running = 5
    responses = run_concurrently(client, running, "over")
    model.reset()
    assert [r.status_code for r in responses] == [200] * running  # all already running
    costs = [r.get_json()["usage"]["cost_usd"] for r in responses]
    spent = service.spend.spent(PRINCIPAL, clock.now.date())
    assert spent == pytest.approx(sum(costs))
    assert budget < spent <= budget + running * max(costs)  # overshot, within the bound
    calls = model.request_count
    assert chat(client).status_code == 429
    assert model.request_count == calls


def test_the_firestore_spend_is_sharded_and_expires(firestore: Any) -> None:
    """The emulator does not enforce Firestore's write rate per document, so that a
    principal's turns spread over several documents is checked here, with what TTL
    needs on each."""
    from google.cloud import firestore as fs

    from agent.store.schema import DAY, OWNER, SPEND, TTL_FIELD
    from agent.store.spend import SHARDS, SpendStore

    client = fs.Client()
    spend = SpendStore(client, timeout_seconds=3)
    day = dt.date(2031, 5, 6)
    for _ in range(32):
        batch = client.batch()
        spend.recording("alice@example.com", day, 0.25)(batch)
        batch.commit()
    docs = [snap.to_dict() or {} for snap in client.collection(SPEND).stream()]
    assert 1 < len(docs) <= SHARDS
    for doc in docs:
        assert doc[OWNER] == "alice@example.com" and doc[DAY] == "2031-05-06"
        assert doc[TTL_FIELD] == dt.datetime(2031, 5, 9, tzinfo=dt.UTC)  # a Timestamp
    assert spend.spent("alice@example.com", day) == 8.0
