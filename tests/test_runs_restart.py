"""A background run's worker process killed (SIGKILL) mid-slice and started again: the
queue's retry resumes the run from its last checkpoint (functions-framework server)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.runs.queue import LocalQueue, step_task
from agent.service import build_service
from local.demo_model import DemoModelServer
from local.server import LiveServer
from tests.support.constants import MODEL

CHAIN = "1+1 then 2+2 then 3+3 then 4+4 then 5+5"
PRICES = json.dumps({MODEL: {"input": 2.0, "cached_input": 1.0, "output": 8.0}})
SECRET = "s" * 40


def _ready(server: LiveServer, timeout: float = 30) -> None:
    """Until the server answers: its port opens before its worker has booted."""
    ends = time.monotonic() + timeout
    while True:
        try:
            if server.call("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < ends, "the restarted server never answered"
        time.sleep(0.1)


def _run(server: LiveServer, run_id: str) -> Any:
    status, run, _ = server.call("GET", f"/runs/{run_id}")
    assert status == 200, run
    return run


def test_a_killed_worker_is_resumed_from_its_checkpoint_by_the_queue(
    store_env: dict[str, str], model: DemoModelServer
) -> None:
    env = (
        os.environ
        | store_env
        | {
            "OPENAI_BASE_URL": model.base_url,
            "AGENT_MODEL": MODEL,
            "AUTH_MODE": "none",
            "MODEL_MAX_RETRIES": "0",
            "FUNCTION_TIMEOUT_SECONDS": "8",
            "RUNS_TASK_SECRET": SECRET,
            "MODEL_PRICES": PRICES,
            "BUDGET_USD_PER_PRINCIPAL_PER_DAY": "100",
        }
    )
    model.control(delay_seconds=4.0)  # each step outlasts its 3.6 s slice
    first = LiveServer(env)
    queue = None
    try:
        status, accepted, _ = first.call("POST", "/chat", {"message": CHAIN, "background": True})
        assert status == 202, accepted
        run_id = accepted["run_id"]
        ends = time.monotonic() + 60
        while model.request_count < 3:  # the third step's model call is on
            assert time.monotonic() < ends, _run(first, run_id)
            time.sleep(0.02)
        first.kill()
        second = LiveServer(env, port=first.port)
        try:
            _ready(second)
            run = _run(second, run_id)
            assert run["status"] == "running" and run["usage"]["requests"] == 2
            # The queue redelivers the killed slice's task (Cloud Tasks retries a task
            # whose worker never answered); the first attempts meet the dead worker's
            # lease (503) until it lapses.
            queue = LocalQueue(dispatch_deadline=30, secret=SECRET, max_backoff=2)
            queue.enqueue(step_task(run_id, 2, second.url))
            ends = time.monotonic() + 120
            while (run := _run(second, run_id))["status"] not in ("completed", "failed"):
                assert time.monotonic() < ends, run
                time.sleep(0.2)
            assert run["status"] == "completed", run
            requests = [json.dumps(r["messages"], sort_keys=True) for r in model.requests]
            # Six model calls, one made twice: the one the kill cut off (its answer
            # never reached the worker, so the retry makes it again, as it must).
            assert len(requests) == 7 and len(set(requests)) == 6
            assert requests[2] == requests[3]
            last = model.requests[-1]["messages"]
            calls = [m["tool_call_id"] for m in last if m.get("role") == "tool"]
            assert len(calls) == len(set(calls)) == 5  # each tool call once
            assert run["response"]["reply"] == "[demo model] The calculator says: 10."
            _, session, _ = second.call("GET", f"/sessions/{accepted['session_id']}")
            assert session["turns"] == 1 and len(session["items"]) == 12
        finally:
            log = second.stop()
    finally:
        if queue is not None:
            queue.close()
        first.stop()
    assert "Traceback" not in log, log
    # Spend: each model call whose answer the run used is charged once; the call the
    # kill cut off was charged to no slice that settled (its hold lapses with the day).
    usages = {
        json.dumps(r["messages"], sort_keys=True): u
        for r, u in zip(model.requests, model.usages, strict=True)
    }
    billed = sum(2 * u["prompt_tokens"] + 8 * u["completion_tokens"] for u in usages.values())
    service = build_service(Settings.from_env(env))
    try:
        assert service.spend.spent("local", utc_now().date()) == pytest.approx(billed / 1e6)
    finally:
        service.close()
