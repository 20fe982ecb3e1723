"""A run's webhook: which URLs it may name, how a delivery is signed, and the delivery.

``check_webhook`` runs at submit time and again before every delivery (the settings of
the instance that delivers may be stricter than those of the one that accepted the
run). It only parses the URL: nothing is resolved or fetched, so a refused URL is
never contacted.

Deliveries are signed per the Standard Webhooks specification: ``webhook-id`` (the
same for every retry of one message, so a receiver can drop duplicates),
``webhook-timestamp`` (Unix seconds, fresh per attempt), ``webhook-signature``
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed with the base64-decoded part
of ``WEBHOOK_SIGNING_SECRET`` (``whsec_...``).

``deliver`` is one attempt: a POST with a timeout, redirects never followed (a 3xx is
a failed attempt: following it would send the signed body to a host nobody checked).
A 2xx ends the delivery; anything else raises ``WebhookFailed``, and the queue task that
called it answers non-2xx so that the queue retries it with backoff.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Mapping

from agent.base.errors import ApiError
from agent.base.settings import LOOPBACK_HOSTS, Settings, csv, redact_url
from agent.runs.queue import Task

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
DELIVERY_TIMEOUT_SECONDS = 10.0
"""One attempt's bound (connect and each read); the queue's retries do the rest."""
WEBHOOK_TASK_PATH = "/tasks/webhooks"
"""The route that delivers one webhook message (the queue's, not a caller's)."""
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
"""The Standard Webhooks specification's bounds for a secret's key."""


class WebhookFailed(Exception):
    """One delivery attempt did not get a 2xx; the text is for the log only."""


def invalid_webhook(message: str) -> ApiError:
    return ApiError(400, "invalid_webhook", message)


def check_webhook(url: str, settings: Settings) -> str:
    """``url`` if a run may be given it as its webhook; else ``ApiError`` 400
    ``invalid_webhook``. Accepted: https to a host named in ``WEBHOOK_ALLOWED_HOSTS``, or
    http to a loopback host named there when not deployed (``K_SERVICE`` unset). Never
    fetches or resolves anything."""
    if not isinstance(url, str) or len(url) > 2048:
        raise invalid_webhook("webhook must be a URL (at most 2048 characters).")
    allowed = {_canonical(host) for host in csv(settings.webhook_allowed_hosts)}
    if not allowed:
        raise invalid_webhook("Webhooks are not enabled on this service.")
    if not settings.webhook_signing_secret:
        # An unsigned delivery could be forged by anyone: refuse rather than send one.
        raise invalid_webhook("Webhooks are not enabled on this service.")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise invalid_webhook("webhook is not a valid URL.") from None
    # User info is refused outright: "https://allowed.example@evil.example/" names
    # evil.example, and a reader of the URL may think otherwise.
    if not host or "@" in parts.netloc or parts.username is not None:
        raise invalid_webhook("webhook must be an http(s) URL with a host and no user info.")
    if any(ch in url for ch in "\r\n\t ") or parts.fragment:
        raise invalid_webhook("webhook must not contain whitespace or a fragment.")
    host = _canonical(host)
    if host not in allowed:
        raise invalid_webhook("webhook host is not in this service's allowed webhook hosts.")
    loopback = host in LOOPBACK_HOSTS
    if loopback and settings.k_service:
        # Deployed, a loopback webhook would be the instance calling itself.
        raise invalid_webhook("A loopback webhook is refused on Cloud Functions.")
    if parts.scheme == "https" or (parts.scheme == "http" and loopback):
        return url
    raise invalid_webhook("webhook must be https (http only to a loopback host, locally).")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: its base64 part, decoded strictly."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret's part after whsec_ must be base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError("a webhook secret holds 24 to 64 bytes")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def message_id(run_id: str, status: str, seq: int) -> str:
    """A message's ``webhook-id``: one per run and status change (its event ``seq``), the
    same for every attempt, so a receiver that saw it already can drop a retry."""
    return f"msg_{run_id}_{status}_{seq}"


def webhook_task(run_id: str, status: str, step: int, target_url: str) -> Task:
    """The queue task that delivers the message of ``run_id`` reaching ``status`` at
    ``step``: named after it, so enqueueing it again (a retried slice) makes one task,
    and retried by the queue until the receiver answers 2xx."""
    return Task(
        name=f"{run_id}-hook-{status}-{step}",
        target_url=target_url,
        body={"run_id": run_id, "status": status, "step": step},
        path=WEBHOOK_TASK_PATH,
    )


def encode_body(status_body: Mapping[str, object]) -> bytes:
    """The exact bytes that are signed and sent (compact JSON, UTF-8)."""
    return json.dumps(status_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def deliver(
    url: str,
    status_body: Mapping[str, object],
    settings: Settings,
    *,
    msg_id: str,
    now: float | None = None,
    timeout: float = DELIVERY_TIMEOUT_SECONDS,
) -> int:
    """One attempt: POST ``status_body`` (the run's ``GET /runs/<id>`` body, which holds
    no secret) to ``url``, signed. Returns the 2xx status; raises ``WebhookFailed`` on
    anything else (so the queue retries), ``ApiError`` if ``url`` is not allowed here
    (a retry cannot fix that: the caller ends the delivery)."""
    check_webhook(url, settings)
    secret = settings.webhook_signing_secret
    assert secret is not None  # check_webhook refuses a service without one
    body = encode_body(status_body)
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agent-cloud-function-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    # requests is already loaded by google-auth's transport; imported here so that a
    # process that never delivers a webhook does not pay for it.
    import requests

    try:
        reply = requests.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.RequestException as error:
        raise WebhookFailed(f"{redact_url(url)}: {type(error).__name__}") from None
    reply.close()
    if 200 <= reply.status_code < 300:
        log.info("webhook %s delivered to %s: %d", msg_id, redact_url(url), reply.status_code)
        return reply.status_code
    raise WebhookFailed(f"{redact_url(url)} answered {reply.status_code}")


def _canonical(host: str) -> str:
    """Host names compare case-insensitively and without a trailing dot."""
    return host.strip().lower().rstrip(".")
