"""Run webhooks (agent/runs/webhooks.py): which URLs a run may name, Standard Webhooks
signatures checked by the specification's own package (``standardwebhooks``), one
delivery attempt against a loopback receiver, and secrets refused at startup."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks

from agent.base.errors import ApiError
from agent.base.settings import Settings, SettingsError
from agent.runs import webhooks

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
STATUS_BODY: dict[str, object] = {
    "run_id": "run-1",
    "session_id": "s-1",
    "status": "completed",
    "created_at": "2026-12-08T00:00:00Z",
    "updated_at": "2026-12-08T00:01:00Z",
    "usage": {"input_tokens": 3, "output_tokens": 5},
    "response": {"reply": "Tschüss ✓", "session_id": "s-1"},
}


class Receiver:
    """A loopback HTTP receiver that records every request and answers ``statuses`` in
    turn (the last one repeats)."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.reply_headers = headers or {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.delay = 0.0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append((self.command, self.path, dict(self.headers), body))
                time.sleep(receiver.delay)
                status = receiver.statuses[min(len(receiver.requests), len(statuses)) - 1]
                self.send_response(status)
                for name, value in receiver.reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([204])
    yield r
    r.close()


def settings(**changes: Any) -> Settings:
    base = Settings.from_env(
        {
            "HISTORY_BACKEND": "sqlite",
            "WEBHOOK_ALLOWED_HOSTS": "hooks.example.com,127.0.0.1,localhost",
            "WEBHOOK_SIGNING_SECRET": SECRET,
        }
    )
    return dataclasses.replace(base, **changes)


# --- check_webhook -----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/runs",
        "https://HOOKS.example.com./runs?x=1",
        "https://hooks.example.com:8443/runs",
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
    ],
)
def test_allowed_webhooks(url: str) -> None:
    assert webhooks.check_webhook(url, settings()) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/runs", "https"),
        ("https://evil.example.com/runs", "not in"),
        ("https://hooks.example.com.evil.example/runs", "not in"),
        ("https://hooks.example.com@evil.example/runs", "user info"),
        ("https://user:pw@hooks.example.com/runs", "user info"),
        ("ftp://hooks.example.com/runs", "https"),
        ("file:///etc/passwd", "host"),
        ("https://hooks.example.com:99999/", "valid URL"),
        ("https://hooks.example.com/a b", "whitespace"),
        ("https://hooks.example.com/#frag", "fragment"),
        ("http://127.0.0.2/hook", "not in"),
        ("http://[::1]/hook", "not in"),
        ("https://" + "a" * 2050, "2048"),
        ("hooks.example.com/runs", "host"),
    ],
)
def test_refused_webhooks_are_400_invalid_webhook(url: str, why: str) -> None:
    with pytest.raises(ApiError) as caught:
        webhooks.check_webhook(url, settings())
    assert (caught.value.status, caught.value.code) == (400, "invalid_webhook")
    assert why in caught.value.message


def test_loopback_is_refused_on_cloud_functions() -> None:
    with pytest.raises(ApiError) as caught:
        webhooks.check_webhook("http://127.0.0.1:9/hook", settings(k_service="agent"))
    assert caught.value.code == "invalid_webhook"
    assert "Cloud Functions" in caught.value.message
    # https to a listed public host still works there
    deployed = settings(k_service="agent")
    assert webhooks.check_webhook("https://hooks.example.com/x", deployed)


@pytest.mark.parametrize(
    "change",
    [{"webhook_allowed_hosts": None}, {"webhook_signing_secret": None}],
)
def test_webhooks_are_off_without_hosts_or_secret(change: dict[str, object]) -> None:
    with pytest.raises(ApiError) as caught:
        webhooks.check_webhook("https://hooks.example.com/x", settings(**change))
    assert (caught.value.status, caught.value.code) == (400, "invalid_webhook")
    assert "not enabled" in caught.value.message


# --- signing and delivery -------------------------------------------------------------


def test_a_delivery_is_signed_so_standardwebhooks_verifies_it(receiver: Receiver) -> None:
    status = webhooks.deliver(receiver.url(), STATUS_BODY, settings(), msg_id="msg_run-1_x_7")
    assert status == 204
    [(method, path, headers, body)] = receiver.requests
    assert (method, path) == ("POST", "/hook")
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "msg_run-1_x_7"
    # The specification's own implementation, not ours, checks the signature.
    verified = standardwebhooks.Webhook(SECRET).verify(body, headers)
    assert verified == STATUS_BODY
    # Any other secret, or a changed body, fails verification.
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(body, headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body.replace(b"completed", b"failed"), headers)
    # The secret never travels: neither its text nor its key is in the headers or body.
    sent = json.dumps(headers).encode() + body
    assert SECRET.encode() not in sent
    assert SECRET.removeprefix("whsec_").encode() not in sent


def test_the_signature_matches_the_package_for_a_fixed_message() -> None:
    body = webhooks.encode_body(STATUS_BODY)
    ours = webhooks.sign(SECRET, "msg_1", 1_700_000_000, body)
    when = dt.datetime.fromtimestamp(1_700_000_000, tz=dt.UTC)
    theirs = standardwebhooks.Webhook(SECRET).sign("msg_1", when, body.decode())
    assert ours == theirs


def test_a_stale_timestamp_fails_the_receivers_check(receiver: Receiver) -> None:
    # The timestamp is the attempt's own: a receiver's replay window relies on it.
    webhooks.deliver(receiver.url(), STATUS_BODY, settings(), msg_id="m", now=time.time() - 3600)
    [(_, _, headers, body)] = receiver.requests
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize("status", [500, 503, 404, 429])
def test_a_non_2xx_answer_fails_the_attempt_so_the_queue_retries(status: int) -> None:
    receiver = Receiver([status, 200])
    try:
        with pytest.raises(webhooks.WebhookFailed, match=str(status)):
            webhooks.deliver(receiver.url(), STATUS_BODY, settings(), msg_id="m1")
        # The retry (the queue's next attempt) carries the same id and succeeds.
        assert webhooks.deliver(receiver.url(), STATUS_BODY, settings(), msg_id="m1") == 200
        ids = [headers["webhook-id"] for _, _, headers, _ in receiver.requests]
        assert ids == ["m1", "m1"]
    finally:
        receiver.close()


def test_a_redirect_is_never_followed() -> None:
    target = Receiver([200])
    redirector = Receiver([307], headers={"Location": target.url("/stolen")})
    try:
        with pytest.raises(webhooks.WebhookFailed, match="307"):
            webhooks.deliver(redirector.url(), STATUS_BODY, settings(), msg_id="m")
        assert len(redirector.requests) == 1
        assert target.requests == []
    finally:
        target.close()
        redirector.close()


def test_an_attempt_is_bounded_by_its_timeout(receiver: Receiver) -> None:
    receiver.delay = 2.0
    started = time.monotonic()
    with pytest.raises(webhooks.WebhookFailed, match="Timeout"):
        webhooks.deliver(receiver.url(), STATUS_BODY, settings(), msg_id="m", timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_a_refused_connection_fails_the_attempt() -> None:
    closed = Receiver([200])
    url = closed.url()
    closed.close()
    with pytest.raises(webhooks.WebhookFailed, match="ConnectionError"):
        webhooks.deliver(url, STATUS_BODY, settings(), msg_id="m")


def test_a_disallowed_host_is_400_and_its_receiver_never_contacted(receiver: Receiver) -> None:
    # The receiver listens on 127.0.0.1, but this service allows only hooks.example.com,
    # and deployed (K_SERVICE) no loopback at all: neither check nor delivery contacts it.
    for refusing in (
        settings(webhook_allowed_hosts="hooks.example.com"),
        settings(k_service="agent"),
    ):
        with pytest.raises(ApiError) as caught:
            webhooks.check_webhook(receiver.url(), refusing)
        assert (caught.value.status, caught.value.code) == (400, "invalid_webhook")
        with pytest.raises(ApiError):
            webhooks.deliver(receiver.url(), STATUS_BODY, refusing, msg_id="m")
    assert receiver.requests == []


def test_message_ids_are_stable_per_status_change() -> None:
    assert webhooks.message_id("r1", "completed", 9) == webhooks.message_id("r1", "completed", 9)
    assert webhooks.message_id("r1", "approval_required", 4) != webhooks.message_id(
        "r1", "approval_required", 6
    )


# --- the secret at startup ------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "not-a-secret",
        "whsec_",
        "whsec_A",  # not base64 (length)
        "whsec_AAAA=AAA",  # padding inside
        "whsec_" + base64.b64encode(bytes(16)).decode(),  # 16 bytes: under the spec's 24
        "whsec_" + base64.b64encode(bytes(65)).decode(),  # over 64
        "Whsec_" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_bad_secrets_are_refused_at_startup(secret: str) -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SIGNING_SECRET"):
        Settings.from_env({"HISTORY_BACKEND": "sqlite", "WEBHOOK_SIGNING_SECRET": secret})


def test_a_good_secret_starts_and_never_shows_in_repr() -> None:
    started = Settings.from_env({"HISTORY_BACKEND": "sqlite", "WEBHOOK_SIGNING_SECRET": SECRET})
    assert SECRET not in repr(started)
    assert len(webhooks.signing_key(SECRET)) == 32
