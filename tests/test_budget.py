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
from local.demo_model import SUMMARIZE_INSTRUCTION, DemoModelServer
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
    budget, reserve = 20.5 * cost, 2.05 * cost  # the default reserve: a tenth
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
    # Refused only once the budget was spent or held: a burst is not refused as a whole
    # (holds are ordered), at least budget / reserve turns pass.
    assert len(passed) >= 10
    spent = service.spend.spent(PRINCIPAL, clock.now.date())
    assert spent == pytest.approx(sum(passed))
    assert spent < budget + reserve
    assert chat(client).status_code == (429 if spent >= budget else 200)


def billed_usd(model: DemoModelServer) -> float:
    """What the model calls the demo model answered cost at PRICES: 2 micro-dollars an
    input token, 8 an output token, so each call's cost is a whole number of micros."""
    micros = sum(2 * u["prompt_tokens"] + 8 * u["completion_tokens"] for u in model.usages)
    return micros / 1_000_000


def charged_usd(service: Service, day: dt.date, expected: float, timeout: float = 15) -> float:
    """The principal's recorded spend once it reaches ``expected`` (a call still being
    read is charged when it ends) or ``timeout`` passes."""
    until = time.monotonic() + timeout
    while True:
        spent = service.spend.spent(PRINCIPAL, day)
        if spent == pytest.approx(expected) or time.monotonic() > until:
            return spent
        time.sleep(0.05)


def test_parallel_turns_overshoot_by_at_most_one_reservation(
    build: Build, model: DemoModelServer
) -> None:
    cost = one_turn_cost(build)
    clock = Clock(utc_now())
    budget, reserve = 2.5 * cost, cost
    client, service = build(
        clock, budget_usd_per_principal_per_day=budget, budget_reserve_usd_per_turn=reserve
    )
    model.reset()
    model.control(delay_seconds=1.0)  # all 30 are checked before any of them ends
    responses = run_concurrently(client, 30, "over")
    model.control(delay_seconds=0)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    passed = statuses.count(200)
    assert passed == 3  # holds of 0, 1 and 2 turns came before them: under 2.5
    spent = charged_usd(service, clock.now.date(), billed_usd(model))
    assert len(model.usages) == passed  # a refused turn makes no model call
    assert spent == pytest.approx(billed_usd(model))  # every call, exactly
    assert budget < spent <= budget + reserve  # overshot by at most one reservation
    calls = model.request_count
    assert chat(client).status_code == 429
    assert model.request_count == calls


def test_abandoned_streams_are_charged_what_the_model_reported(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(clock, budget_usd_per_principal_per_day=100)
    model.reset()
    model.control(stream_chunk_delay_seconds=0.05)
    for n in range(3):
        body = {"message": "tell me a long story", "session_id": f"gone-{n}", "stream": True}
        response = client.post("/chat", json=body, buffered=False)
        assert response.status_code == 200
        chunks = iter(response.response)
        while b"event: delta" not in next(chunks):
            pass
        response.close()  # the reader left after the first delta
    # Each stream is still read to the usage the model reports last.
    spent = charged_usd(service, clock.now.date(), billed_usd(model))
    assert len(model.usages) == 3 and spent > 0
    assert spent == pytest.approx(billed_usd(model))
    for n in range(3):  # and nothing of those turns was stored
        assert client.get(f"/sessions/gone-{n}").status_code == 404


def test_turns_that_hit_agent_max_turns_are_charged_their_calls(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(clock, budget_usd_per_principal_per_day=100, agent_max_turns=1)
    model.reset()
    for n in range(3):  # a tool call, then no turn left for the answer
        response = chat(client, "What is 12 * (3 + 4)?", f"max-{n}")
        assert response.status_code == 422, response.get_json()
    assert len(model.usages) == 3
    assert charged_usd(service, clock.now.date(), billed_usd(model)) == pytest.approx(
        billed_usd(model)
    )


def test_a_turn_past_its_deadline_is_charged_the_calls_it_made(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(
        clock,
        budget_usd_per_principal_per_day=100,
        function_timeout_seconds=3,
        deadline_margin_seconds=0.5,
        model_call_min_seconds=1.2,
    )
    model.reset()
    model.control(delay_seconds=1.0)  # the tool call's call ends with too little time left
    response = chat(client, "what is 2 + 3?", "late")
    assert response.status_code == 504
    assert len(model.usages) == 1
    assert charged_usd(service, clock.now.date(), billed_usd(model)) == pytest.approx(
        billed_usd(model)
    )


def test_a_failed_call_after_earlier_ones_leaves_them_charged(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(clock, budget_usd_per_principal_per_day=100, model_max_retries=0)
    model.reset()
    model.control(fail_status=500, fail_count=-1, pass_count=1)  # the answer's call fails
    response = chat(client, "What is 12 * (3 + 4)?", "fails-late")
    assert response.status_code == 502
    assert model.request_count == 2 and len(model.usages) == 1  # the 500 is not billed
    assert charged_usd(service, clock.now.date(), billed_usd(model)) == pytest.approx(
        billed_usd(model)
    )


PAD = " and then we talked about the weather, the garden, the trains and the sea" * 8


def test_a_summary_made_before_a_turn_that_fails_is_charged(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(
        clock, budget_usd_per_principal_per_day=100, context_max_tokens=4000, model_max_retries=0
    )
    model.reset()
    turn, session = 0, "long"
    while True:  # turns until one folds the history into a summary
        turn += 1
        probe = chat(client, f"turn {turn}: my name is Ada" + PAD, session)
        assert probe.status_code == 200 and turn < 40
        if "summary" in probe.get_json()["usage"]:
            break
    # The same conversation up to that turn on a second session, then the folding turn
    # with its summary answered and its agent call failing.
    for n in range(1, turn):
        assert chat(client, f"turn {n}: my name is Ada" + PAD, "fails").status_code == 200
    before = len(model.usages)
    model.control(fail_status=500, fail_count=-1, pass_count=1)
    assert chat(client, f"turn {turn}: my name is Ada" + PAD, "fails").status_code == 502
    model.control(fail_status=None, fail_count=0)
    assert len(model.usages) == before + 1  # the summary's call was answered
    summary = model.requests[-2]["messages"][0]["content"]
    assert str(summary).startswith(SUMMARIZE_INSTRUCTION)
    assert charged_usd(service, clock.now.date(), billed_usd(model)) == pytest.approx(
        billed_usd(model)
    )


def test_the_firestore_spend_is_one_document_per_turn_and_expires(firestore: Any) -> None:
    """What a turn writes, and what TTL needs on it, on the emulator: a hold, then its
    settled charge in integer micro-dollars, in its principal's and day's subcollection,
    read by one aggregation."""
    from google.cloud import firestore as fs

    from agent.store.schema import CHARGE_MICROS, DAY, HOLDING, OWNER, SPEND_TURNS, TTL_FIELD
    from agent.store.spend import SpendStore

    client = fs.Client()
    spend = SpendStore(client, timeout_seconds=3)
    day = dt.date(2031, 5, 6)
    for n in range(32):
        before = spend.hold("alice@example.com", day, f"t{n}", 1_000_000)
        assert before.cost_micros == n * 250_000 and before.held_micros == 0
        spend.settle("alice@example.com", day, f"t{n}", 250_000, 1)
        spend.settle("alice@example.com", day, f"t{n}", 250_000, 1)  # a retry: no double
    docs = [snap.to_dict() or {} for snap in client.collection_group(SPEND_TURNS).stream()]
    assert len(docs) == 32
    for doc in docs:
        assert doc[OWNER] == "alice@example.com" and doc[DAY] == "2031-05-06"
        assert doc[TTL_FIELD] == dt.datetime(2031, 5, 9, tzinfo=dt.UTC)  # a Timestamp
        assert doc[CHARGE_MICROS] == 250_000 and doc[HOLDING] is False
    assert spend.spent("alice@example.com", day) == 8.0
    assert spend.spent("bob@example.com", day) == 0.0


def test_an_abandoned_streamed_resume_is_charged_its_calls(
    build: Build, model: DemoModelServer, tmp_path: Any
) -> None:
    clock = Clock(utc_now())
    client, service = build(
        clock, budget_usd_per_principal_per_day=100, outbox_path=str(tmp_path / "outbox")
    )
    model.reset()
    paused = chat(client, 'send "hi there" to alice', "resume")
    assert paused.status_code == 200 and paused.get_json()["status"] == "approval_required"
    [call] = paused.get_json()["pending_approvals"]
    model.control(stream_chunk_delay_seconds=0.05)
    body = {
        "pause_id": paused.get_json()["pause_id"],
        "decisions": [{"call_id": call["call_id"], "approve": True}],
        "stream": True,
    }
    response = client.post("/sessions/resume/approvals", json=body, buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    while b"event: delta" not in next(chunks):
        pass
    response.close()  # the reader left during the answer after the tool
    spent = charged_usd(service, clock.now.date(), billed_usd(model))
    assert len(model.usages) == 2  # the call that paused, the answer after the tool
    assert spent == pytest.approx(billed_usd(model))


def test_a_turn_charged_its_whole_reservation_starts_no_further_call(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    # A reservation of a millionth of a dollar: spent by the first call of any turn.
    client, service = build(
        clock, budget_usd_per_principal_per_day=100, budget_reserve_usd_per_turn=0.000001
    )
    model.reset()
    response = chat(client, "What is 12 * (3 + 4)?", "capped")  # a tool call, then...
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "budget_exceeded"
    assert_conforms("POST", "/chat", 429, response.get_json(), response.headers)
    assert model.request_count == 1  # ... no answer's call
    assert charged_usd(service, clock.now.date(), billed_usd(model)) == pytest.approx(
        billed_usd(model)
    )
    assert client.get("/sessions/capped").status_code == 404


def test_a_call_whose_usage_never_arrives_is_charged_its_reservation(
    build: Build, model: DemoModelServer
) -> None:
    clock = Clock(utc_now())
    client, service = build(clock, budget_usd_per_principal_per_day=100, model_max_retries=0)
    model.reset()
    model.control(hang_seconds=0.3)  # the connection is dropped unanswered
    assert chat(client, "hi", "dropped").status_code == 502
    assert model.request_count == 1 and model.usages == []
    # Nothing reported: the call may have been billed, so it is charged its reservation,
    # at least 4096 output tokens at 8 micro-dollars each.
    spent = service.spend.spent(PRINCIPAL, clock.now.date())
    assert spent >= 4096 * 8 / 1_000_000
