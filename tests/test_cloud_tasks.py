"""CloudTasksQueue (agent/runs/cloud_tasks.py) with the real google-cloud-tasks client,
over real gRPC, against a loopback stand-in of Cloud Tasks built from the library's own
message definitions (tests/support/cloud_tasks_stand_in.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.base.errors import ApiError
from agent.base.settings import Settings, SettingsError
from agent.runs.cloud_tasks import CloudTasksQueue
from agent.runs.queue import Task, step_task
from tests.support.cloud_tasks_stand_in import CloudTasksStandIn

QUEUE = "projects/p1/locations/us-central1/queues/agent-runs"
INVOKER = "agent-tasks@p1.iam.gserviceaccount.com"
TARGET = "https://us-central1-p1.cloudfunctions.net/agent"
ROOT = Path(__file__).resolve().parents[1]


def settings(**changes: object) -> Settings:
    base = Settings.from_env(
        {
            "HISTORY_BACKEND": "sqlite",
            "RUNS_QUEUE": QUEUE,
            "RUNS_INVOKER": INVOKER,
            "RUNS_TARGET_URL": TARGET + "/",
            "FUNCTION_TIMEOUT_SECONDS": "300",
            "STORE_TIMEOUT_SECONDS": "2",
        }
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def stand_in() -> Iterator[CloudTasksStandIn]:
    server = CloudTasksStandIn(queues={QUEUE})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def queue(stand_in: CloudTasksStandIn) -> CloudTasksQueue:
    return CloudTasksQueue(settings(), endpoint=f"127.0.0.1:{stand_in.port}")


def test_a_step_becomes_a_named_http_task_with_the_invokers_oidc_token(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    queue.enqueue(step_task("run_Ab-1", 3, "http://ignored.example"))
    [create] = stand_in.creates()
    assert create.parent == QUEUE
    task = create.task
    assert task.name == queue.task_name("run_Ab-1-3")
    assert task.name.startswith(QUEUE + "/tasks/") and task.name.endswith("-run_Ab-1-3")
    http = task.http_request
    # RUNS_TARGET_URL, never the task's own base URL (a request's Host may have made it).
    assert http.url == TARGET + "/tasks/runs"
    assert http.http_method.name == "POST"
    assert dict(http.headers) == {"Content-Type": "application/json"}
    assert json.loads(http.body) == {"run_id": "run_Ab-1", "step": 3}
    assert http.oidc_token.service_account_email == INVOKER
    assert http.oidc_token.audience == TARGET
    # The dispatch deadline is the function's timeout: Cloud Tasks stops waiting when
    # the platform would have cut the request anyway.
    assert task.dispatch_deadline == dt.timedelta(seconds=300)
    assert "schedule_time" not in task
    assert QUEUE + "/tasks/" in next(iter(stand_in.tasks))


def test_the_same_name_twice_is_one_task_and_no_error(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    queue.enqueue(step_task("r1", 1, TARGET))
    queue.enqueue(step_task("r1", 1, TARGET))  # ALREADY_EXISTS: enqueued already
    assert len(stand_in.creates()) == 2
    assert len(stand_in.tasks) == 1


def test_a_name_stays_taken_after_its_task_ran(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    queue.enqueue(step_task("r1", 2, TARGET))
    stand_in.execute(queue.task_name("r1-2"))
    queue.enqueue(step_task("r1", 2, TARGET))  # a late duplicate of a done step
    assert stand_in.tasks == {}
    queue.enqueue(step_task("r1", 3, TARGET))
    assert list(stand_in.tasks) == [queue.task_name("r1-3")]


def test_a_delay_sets_the_schedule_time(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    before = dt.datetime.now(dt.UTC)
    queue.enqueue(step_task("r2", 1, TARGET, delay_seconds=30))
    after = dt.datetime.now(dt.UTC)
    [create] = stand_in.creates()
    scheduled = create.task.schedule_time
    assert before + dt.timedelta(seconds=30) <= scheduled <= after + dt.timedelta(seconds=30)


def test_another_path_and_body_are_carried_as_given(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    task = Task(name="hook-r3-7", target_url=TARGET, body={"run_id": "r3"}, path="/tasks/hooks")
    queue.enqueue(task)
    [create] = stand_in.creates()
    assert create.task.http_request.url == TARGET + "/tasks/hooks"
    assert json.loads(create.task.http_request.body) == {"run_id": "r3"}


@pytest.mark.parametrize(("timeout", "deadline"), [(5, 15), (300, 300), (3600, 1800)])
def test_the_dispatch_deadline_stays_within_cloud_tasks_bounds(
    stand_in: CloudTasksStandIn, timeout: int, deadline: int
) -> None:
    queue = CloudTasksQueue(
        settings(function_timeout_seconds=timeout), endpoint=f"127.0.0.1:{stand_in.port}"
    )
    queue.enqueue(step_task("r4", 1, TARGET))
    assert stand_in.creates()[0].task.dispatch_deadline == dt.timedelta(seconds=deadline)
    assert len(stand_in.tasks) == 1  # the stand-in accepted it (15 s - 30 min)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ],
)
def test_a_refusal_is_a_clear_503_and_the_log_says_why(
    stand_in: CloudTasksStandIn,
    queue: CloudTasksQueue,
    caplog: pytest.LogCaptureFixture,
    code: grpc.StatusCode,
) -> None:
    stand_in.fail_next(code)
    with caplog.at_level(logging.ERROR), pytest.raises(ApiError) as caught:
        queue.enqueue(step_task("r5", 1, TARGET))
    error = caught.value
    assert (error.status, error.code) == (503, "queue_unavailable")
    assert error.headers["Retry-After"]
    assert "stand-in" not in error.message  # internals stay in the log
    assert "stand-in" in caplog.text
    assert stand_in.tasks == {}


def test_an_unknown_queue_is_a_503(stand_in: CloudTasksStandIn) -> None:
    other = "projects/p1/locations/us-central1/queues/missing"
    queue = CloudTasksQueue(settings(runs_queue=other), endpoint=f"127.0.0.1:{stand_in.port}")
    with pytest.raises(ApiError) as caught:
        queue.enqueue(step_task("r6", 1, TARGET))
    assert caught.value.code == "queue_unavailable"


def test_unavailable_is_retried_and_a_lost_reply_is_not_a_second_task(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    stand_in.fail_next(grpc.StatusCode.UNAVAILABLE, 2)
    queue.enqueue(step_task("r7", 1, TARGET))
    assert len(stand_in.creates()) == 3
    assert len(stand_in.tasks) == 1
    # The task is stored but the reply comes after the client's timeout (2 s): the retry
    # gets ALREADY_EXISTS, which is success, and there is still one task.
    stand_in.hold_next(2.5)
    started = time.monotonic()
    queue.enqueue(step_task("r7", 2, TARGET))
    assert time.monotonic() - started < 4.5
    assert len(stand_in.tasks) == 2
    assert [c.task.name for c in stand_in.creates()][-2:] == [queue.task_name("r7-2")] * 2


def test_an_outage_ends_within_the_bound_as_a_503(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    stand_in.fail_next(grpc.StatusCode.UNAVAILABLE, 1000)
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        queue.enqueue(step_task("r8", 1, TARGET))
    assert caught.value.code == "queue_unavailable"
    assert time.monotonic() - started < 6


def test_names_outside_cloud_tasks_alphabet_are_refused_before_any_call(
    stand_in: CloudTasksStandIn, queue: CloudTasksQueue
) -> None:
    with pytest.raises(ValueError, match="task name"):
        queue.enqueue(step_task("r/../x", 1, TARGET))
    assert stand_in.requests == []


def test_it_needs_the_queue_the_invoker_and_the_target() -> None:
    with pytest.raises(ValueError, match="RUNS_TARGET_URL"):
        CloudTasksQueue(settings(runs_target_url=None))
    # Startup already refuses RUNS_QUEUE without the target or the invoker.
    base = {"HISTORY_BACKEND": "sqlite", "RUNS_QUEUE": QUEUE}
    with pytest.raises(SettingsError, match="RUNS_TARGET_URL"):
        Settings.from_env(base | {"RUNS_INVOKER": INVOKER})
    with pytest.raises(SettingsError, match="RUNS_INVOKER"):
        Settings.from_env(base | {"RUNS_TARGET_URL": TARGET})
    with pytest.raises(ValueError, match="loopback"):
        CloudTasksQueue(settings(), endpoint="tasks.example.com:443")


def test_the_client_library_is_imported_on_first_enqueue_only() -> None:
    # google-cloud-tasks costs about 0.65 s to import: never at cold start.
    code = (
        "import sys\n"
        "from agent.base.settings import Settings\n"
        "from agent.runs.cloud_tasks import CloudTasksQueue\n"
        f"s = Settings.from_env({{'HISTORY_BACKEND': 'sqlite', 'RUNS_QUEUE': {QUEUE!r},"
        f" 'RUNS_INVOKER': {INVOKER!r}, 'RUNS_TARGET_URL': {TARGET!r}}})\n"
        "CloudTasksQueue(s)\n"
        "print(sorted(m for m in sys.modules if m.startswith('google.cloud.tasks')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_with_runs_queue_a_background_run_is_enqueued_on_cloud_tasks(
    settings_env: dict[str, str], stand_in: CloudTasksStandIn, model: object
) -> None:
    from agent.service import build_service
    from tests.support.run_servers import RunServer

    env = settings_env | {"RUNS_QUEUE": QUEUE, "RUNS_INVOKER": INVOKER, "RUNS_TARGET_URL": TARGET}
    built = build_service(Settings.from_env(env))
    try:
        assert isinstance(built.queue, CloudTasksQueue)  # the service's own choice
    finally:
        built.close()
    queue = CloudTasksQueue(Settings.from_env(env), endpoint=f"127.0.0.1:{stand_in.port}")
    server = RunServer(env, queue=queue)
    try:
        status, accepted, _ = server.call("POST", "/chat", {"message": "hi", "background": True})
        assert status == 202, accepted
        [create] = stand_in.creates()
        http = create.task.http_request
        assert json.loads(http.body) == {"run_id": accepted["run_id"], "step": 0}
        assert http.url == TARGET + "/tasks/runs"
        assert http.oidc_token.service_account_email == INVOKER
        assert create.task.name == queue.task_name(f"{accepted['run_id']}-0")
    finally:
        server.stop()
