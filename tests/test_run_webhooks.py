"""A background run's webhook over real HTTP: checked at submit, delivered through the
queue (the local queue here, which delivers as Cloud Tasks does) when the run ends,
signed so that the Standard Webhooks package verifies it, retried until the receiver
takes it; a disallowed host is 400 and never contacted."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import standardwebhooks

from agent.runs.queue import TASK_SECRET_HEADER
from local.demo_model import DemoModelServer
from tests.support.run_servers import RunServer
from tests.test_webhooks import Receiver

SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()


@pytest.fixture
def serve(settings_env: dict[str, str]) -> Iterator[Callable[..., RunServer]]:
    servers: list[RunServer] = []

    def start(**overrides: str) -> RunServer:
        env = settings_env | {
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "WEBHOOK_SIGNING_SECRET": SECRET,
        }
        env |= {key.upper(): str(value) for key, value in overrides.items()}
        server = RunServer(env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _deliveries(receiver: Receiver, count: int, timeout: float = 30) -> list[Any]:
    ends = time.monotonic() + timeout
    while len(receiver.requests) < count:
        assert time.monotonic() < ends, f"{len(receiver.requests)} of {count} deliveries"
        time.sleep(0.05)
    return receiver.requests


def test_a_finished_run_posts_its_status_signed_to_its_webhook(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve()
    receiver = Receiver([204])
    try:
        status, accepted, _ = server.call(
            "POST",
            "/chat",
            {"message": "What is 2+3?", "background": True, "webhook": receiver.url("/hook")},
        )
        assert status == 202, accepted
        run = server.wait(accepted["run_id"])
        assert run["status"] == "completed"
        [(method, path, headers, body)] = _deliveries(receiver, 1)
        assert (method, path) == ("POST", "/hook")
        # Verified by the specification's own package, with the service's secret.
        payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
        assert payload == run  # the run's GET /runs/<id> body, nothing more
        assert SECRET.removeprefix("whsec_") not in body.decode()
        time.sleep(0.5)
        assert len(receiver.requests) == 1  # one message per status reached
    finally:
        receiver.close()


def test_a_receiver_that_fails_gets_the_same_message_again(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve()
    receiver = Receiver([500, 502, 200])
    try:
        _, accepted, _ = server.call(
            "POST", "/chat", {"message": "hello", "background": True, "webhook": receiver.url()}
        )
        server.wait(accepted["run_id"])
        requests = _deliveries(receiver, 3)
        ids = {headers["webhook-id"] for _, _, headers, _ in requests}
        assert len(ids) == 1  # retries carry the message's id: a receiver can dedupe
        for _, _, headers, body in requests:
            standardwebhooks.Webhook(SECRET).verify(body, headers)
        time.sleep(0.5)
        assert len(receiver.requests) == 3  # the 200 ended it
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("overrides", "webhook"),
    [
        ({"webhook_allowed_hosts": "hooks.example.com"}, "http://127.0.0.1:{port}/hook"),
        ({}, "https://evil.example/hook"),
        ({"webhook_signing_secret": ""}, "http://127.0.0.1:{port}/hook"),
    ],
)
def test_a_disallowed_webhook_is_400_and_never_contacted(
    serve: Callable[..., RunServer],
    model: DemoModelServer,
    overrides: dict[str, str],
    webhook: str,
) -> None:
    server = serve(**overrides)
    receiver = Receiver([200])
    try:
        calls = model.request_count
        status, body, _ = server.call(
            "POST",
            "/chat",
            {"message": "hi", "background": True, "webhook": webhook.format(port=receiver.port)},
        )
        assert (status, body["error"]["code"]) == (400, "invalid_webhook")
        time.sleep(0.5)
        assert receiver.requests == []
        assert model.request_count == calls  # no run started
    finally:
        receiver.close()


def test_the_webhook_task_route_is_the_queues_only(
    serve: Callable[..., RunServer], model: DemoModelServer
) -> None:
    server = serve()
    receiver = Receiver([200])
    try:
        _, accepted, _ = server.call(
            "POST", "/chat", {"message": "hi", "background": True, "webhook": receiver.url()}
        )
        run_id = accepted["run_id"]
        server.wait(run_id)
        _deliveries(receiver, 1)
        task = {"run_id": run_id, "step": 0, "status": "completed"}
        assert server.call("POST", "/tasks/webhooks", task)[0] == 401
        wrong = {TASK_SECRET_HEADER: "not-the-secret"}
        assert server.call("POST", "/tasks/webhooks", task, wrong)[0] == 403
        time.sleep(0.3)
        assert len(receiver.requests) == 1
        assert json.loads(receiver.requests[0][3])["run_id"] == run_id
    finally:
        receiver.close()


def test_a_run_that_pauses_for_approval_posts_that_status(
    serve: Callable[..., RunServer], model: DemoModelServer, tmp_path: Any
) -> None:
    server = serve(outbox_path=str(tmp_path / "outbox.jsonl"))
    receiver = Receiver([200])
    try:
        _, accepted, _ = server.call(
            "POST",
            "/chat",
            {"message": 'send "hi there" to alice', "background": True, "webhook": receiver.url()},
        )
        run = server.wait(accepted["run_id"], until=("approval_required", "failed", "completed"))
        assert run["status"] == "approval_required", run
        [(_, _, headers, body)] = _deliveries(receiver, 1)
        payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
        assert payload["status"] == "approval_required"
        assert payload["pending_approvals"] == run["pending_approvals"]
    finally:
        receiver.close()
