"""Background runs over real HTTP: submit, slices, completion (agent/runs)."""

from __future__ import annotations

import http.client
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.base.clock import utc_now
from agent.runs.queue import TASK_SECRET_HEADER, LocalQueue
from local.demo_model import DemoModelServer
from tests.support.constants import ALICE_KEY, API_KEYS, BOB_KEY, MODEL
from tests.support.run_servers import RunServer

CHAIN = "1+1 then 2+2 then 3+3 then 4+4 then 5+5"
"""Six model calls (one per step) and five tool calls (demo model's chained rule)."""
ALICE = {"X-API-Key": ALICE_KEY}
BOB = {"X-API-Key": BOB_KEY}
PRICES = json.dumps({MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}})


@pytest.fixture
def serve(settings_env: dict[str, str], tmp_path: Any) -> Iterator[Callable[..., RunServer]]:
    servers: list[RunServer] = []

    def start(**overrides: str) -> RunServer:
        env = settings_env | {key.upper(): str(value) for key, value in overrides.items()}
        server = RunServer(env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _tool_calls(model: DemoModelServer) -> list[str]:
    """Every tool call id the model was answered for, over all its requests (the last
    request holds them all)."""
    last = model.requests[-1]["messages"]
    return [m["tool_call_id"] for m in last if m.get("role") == "tool"]


def test_a_run_longer_than_the_function_timeout_completes_in_slices(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve(function_timeout_seconds=4)
    # Six model calls of 2.1 s: 12.6 s of calls, three times the 4 s function timeout;
    # each step outlasts the 1.8 s slice, so each slice does one.
    model.control(delay_seconds=2.1)
    status, accepted, headers = server.call("POST", "/chat", {"message": CHAIN, "background": True})
    assert status == 202, accepted
    run_id, session_id = accepted["run_id"], accepted["session_id"]
    assert accepted == {
        "run_id": run_id,
        "session_id": session_id,
        "status": "queued",
        "new_session": True,
    }
    assert headers["Location"] == f"/runs/{run_id}"
    # The session is the run's until it ends.
    status, busy, _ = server.call("POST", "/chat", {"message": "hi", "session_id": session_id})
    assert status == 409 and busy["error"]["code"] == "session_busy"

    run = server.wait(run_id, timeout=90)
    assert run["status"] == "completed", run
    slices = [t for t in server.tasks if t["status"] == 200]
    assert len(slices) >= 3
    assert model.request_count == 6  # each model call once
    calls = _tool_calls(model)
    assert len(calls) == 5 and len(set(calls)) == 5  # each tool call once

    # The same turn in the foreground: the run's response is the body it answers.
    model.control(delay_seconds=0)
    status, foreground, _ = server.call("POST", "/chat", {"message": CHAIN})
    assert status == 200
    response = run["response"]
    assert set(response) == set(foreground)
    assert response["reply"] == foreground["reply"] == "[demo model] The calculator says: 10."
    assert response["session_id"] == session_id and response["new_session"] is True
    assert response["usage"]["requests"] == foreground["usage"]["requests"] == 6
    assert run["usage"] == response["usage"]
    # The history holds the run's turn once, as a foreground turn's.
    _, mine, _ = server.call("GET", f"/sessions/{session_id}")
    _, theirs, _ = server.call("GET", f"/sessions/{foreground['session_id']}")
    assert mine["turns"] == theirs["turns"] == 1
    assert len(mine["items"]) == len(theirs["items"]) == 12
    # And the session is free again.
    status, _, _ = server.call("POST", "/chat", {"message": "hi", "session_id": session_id})
    assert status == 200


def _read_events(
    port: int, run_id: str, last: int | None, budget: int | None, timeout: float = 30
) -> tuple[list[tuple[int, str, Any]], bool]:
    """GET /runs/<id>/events from ``last``; read at most ``budget`` bytes (None: all),
    then hang up. (complete events read, whether the server ended the stream)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {} if last is None else {"Last-Event-ID": str(last)}
    connection.request("GET", f"/runs/{run_id}/events", headers=headers)
    response = connection.getresponse()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    raw = b""
    ended = False
    while budget is None or len(raw) < budget:
        chunk = response.read1(1 if budget is not None else 65536)
        if not chunk:
            ended = True
            break
        raw += chunk
    connection.close()
    events = []
    for block in raw.split(b"\n\n")[:-1]:  # the last piece is incomplete (or empty)
        fields: dict[str, str] = {}
        for line in block.decode().split("\n"):
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "id" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events, ended


def test_a_reader_that_leaves_and_rejoins_sees_every_event_once(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve(function_timeout_seconds=6)
    model.control(delay_seconds=0.4)
    _, accepted, _ = server.call("POST", "/chat", {"message": CHAIN, "background": True})
    run_id = accepted["run_id"]
    chooser = random.Random(21)
    seen: list[tuple[int, str, Any]] = []
    hangups = 0
    while True:
        last = seen[-1][0] if seen else None
        budget = chooser.randint(1, 300) if hangups < 20 else None
        events, ended = _read_events(server.port, run_id, last, budget)
        seen.extend(events)
        if ended:
            break
        hangups += 1
    assert hangups == 20
    whole, ended = _read_events(server.port, run_id, None, None)
    assert ended
    assert seen == whole  # the same events, the same ids, none twice, none missing
    assert [seq for seq, _, _ in whole] == list(range(1, len(whole) + 1))
    kinds = [kind for _, kind, _ in whole]
    assert kinds[:2] == ["status", "status"] and kinds[-2:] == ["done", "status"]
    assert whole[-1][2] == {"status": "completed"}
    assert kinds.count("tool_call") == kinds.count("tool_result") == 5
    run = server.wait(run_id)
    assert whole[-2][2] == run["response"]
    # ?after= as Last-Event-ID, from the middle.
    middle = len(whole) // 2
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", f"/runs/{run_id}/events?after={middle}")
    rest = connection.getresponse().read()
    assert rest.count(b"\nevent: ") + rest.startswith(b"event: ") == len(whole) - middle


def test_events_of_another_principal_or_a_bad_id_are_refused(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve()
    _, accepted, _ = server.call("POST", "/chat", {"message": "hello", "background": True})
    run_id = accepted["run_id"]
    server.wait(run_id)
    status, body, _ = server.call("GET", "/runs/nosuchrun")
    assert status == 404 and body["error"]["code"] == "run_not_found"
    status, body, _ = server.call("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert status == 400 and body["error"]["code"] == "invalid_event_id"


def test_every_task_delivered_twice_runs_each_call_once(
    settings_env: dict[str, str], tmp_path: Any, model: DemoModelServer
) -> None:
    env = settings_env | {
        "FUNCTION_TIMEOUT_SECONDS": "4",
        "MODEL_PRICES": PRICES,
        "BUDGET_USD_PER_PRINCIPAL_PER_DAY": "100",
    }
    queue = LocalQueue(dispatch_deadline=10, copies=2)
    server = RunServer(env, queue=queue)
    try:
        model.control(delay_seconds=1.0)
        _, accepted, _ = server.call("POST", "/chat", {"message": CHAIN, "background": True})
        run = server.wait(accepted["run_id"], timeout=90)
        assert run["status"] == "completed", run
        assert model.request_count == 6
        assert len({t["body"]["step"] for t in server.tasks}) >= 3
        assert len(server.tasks) >= 2 * len({t["body"]["step"] for t in server.tasks})
        calls = _tool_calls(model)
        assert len(calls) == len(set(calls)) == 5
        _, session, _ = server.call("GET", f"/sessions/{accepted['session_id']}")
        outputs = [i for i in session["items"] if i.get("type") == "function_call_output"]
        assert len(outputs) == 5
        # Spend: each model call charged once, whatever the duplicates did.
        billed = sum(2 * u["prompt_tokens"] + 8 * u["completion_tokens"] for u in model.usages)
        spent = server.service.spend.spent("local", utc_now().date())
        assert spent == pytest.approx(billed / 1_000_000)
        assert run["usage"]["requests"] == 6
    finally:
        server.stop()


@pytest.mark.parametrize("action", ["rollback", "interrupt"])
def test_a_cancel_stops_the_run_at_its_next_step_and_leaves_the_history_as_stated(
    serve: Callable[..., RunServer], model: DemoModelServer, action: str
) -> None:
    server = serve(function_timeout_seconds=20)
    model.control(delay_seconds=1.5)
    _, accepted, _ = server.call("POST", "/chat", {"message": CHAIN, "background": True})
    run_id, session_id = accepted["run_id"], accepted["session_id"]
    while model.request_count < 1:  # its first model call is on
        time.sleep(0.02)
    status, body, _ = server.call("POST", f"/runs/{run_id}/cancel", {"action": action})
    assert status == 200, body
    assert body["run_id"] == run_id and body["cancel"] == action
    run = server.wait(run_id)
    assert run["status"] == "cancelled"
    time.sleep(2)  # nothing starts after the cancel: no second model call, ever
    assert model.request_count == 1
    events, ended = _read_events(server.port, run_id, None, None)
    assert ended and events[-1][1:] == ("status", {"status": "cancelled"})
    status, session, _ = server.call("GET", f"/sessions/{session_id}")
    if action == "rollback":
        assert status == 404  # the session's first turn was never committed
    else:
        assert status == 200 and session["turns"] == 1
        kinds = [item.get("type", item.get("role")) for item in session["items"]]
        assert kinds == ["user", "function_call", "function_call_output", "message"]
        assert "cancelled" in json.dumps(session["items"][-1])
    # The session is free again; a finished run cannot be cancelled.
    status, _, _ = server.call("POST", "/chat", {"message": "hi", "session_id": session_id})
    assert status == 200
    status, body, _ = server.call("POST", f"/runs/{run_id}/cancel", {})
    assert status == 409 and body["error"]["code"] == "run_finished"


def test_another_principal_gets_404_and_tasks_need_the_queue(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve(auth_mode="api_key", auth_api_keys=API_KEYS)
    _, accepted, _ = server.call(
        "POST", "/chat", {"message": "hello", "background": True}, headers=ALICE
    )
    run_id = accepted["run_id"]
    assert server.wait(run_id, headers=ALICE)["status"] == "completed"
    for method, path in (
        ("GET", f"/runs/{run_id}"),
        ("GET", f"/runs/{run_id}/events"),
        ("POST", f"/runs/{run_id}/cancel"),
    ):
        status, body, _ = server.call(method, path, {} if method == "POST" else None, BOB)
        assert (status, body["error"]["code"]) == (404, "run_not_found"), path
    # The task route takes no caller credential: none is 401, a caller's 401, a wrong
    # queue secret 403; nothing runs.
    calls = model.request_count
    task = {"run_id": run_id, "step": 0}
    assert server.call("POST", "/tasks/runs", task)[0] == 401
    assert server.call("POST", "/tasks/runs", task, ALICE)[0] == 401
    wrong = {TASK_SECRET_HEADER: "not-the-secret"}
    assert server.call("POST", "/tasks/runs", task, wrong)[0] == 403
    assert model.request_count == calls
    status, body, _ = server.call("POST", "/chat", {"message": "x", "background": 1}, ALICE)
    assert status == 400 and body["error"]["code"] == "invalid_request"


def test_a_budget_exhausted_between_slices_fails_the_run(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    # One model call of the chain costs about 600 micro-dollars at PRICES: the first
    # slice is admitted, the second is over the day's budget.
    server = serve(
        function_timeout_seconds=4,
        model_prices=PRICES,
        budget_usd_per_principal_per_day="0.0005",
    )
    model.control(delay_seconds=2.0)  # one step per slice
    _, accepted, _ = server.call("POST", "/chat", {"message": CHAIN, "background": True})
    run = server.wait(accepted["run_id"], timeout=60)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "budget_exceeded"
    assert model.request_count == 1
    assert run["usage"]["requests"] == 1
    events, _ = _read_events(server.port, accepted["run_id"], None, None)
    assert [kind for _, kind, _ in events][-2:] == ["error", "status"]
    # Nothing was committed: the session is as before the run (here: none), and free.
    assert server.call("GET", f"/sessions/{accepted['session_id']}")[0] == 404
    status, body, _ = server.call("POST", "/chat", {"message": "hi"})
    assert status == 429 and body["error"]["code"] == "budget_exceeded"
