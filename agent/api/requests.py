"""Checking a request before anything is spent on it: the ``POST /chat`` and
``POST /sessions/<id>/approvals`` bodies, session ids, the ``Idempotency-Key`` header."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from werkzeug.datastructures import Headers

from agent.base import errors
from agent.turn.approvals import MAX_PENDING_CALLS, MAX_REASON_CHARS, Verdict

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, as the IETF draft's examples
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_FIELDS = {"message", "session_id", "stream", "background", "multitask", "webhook"}
_MULTITASK = ("reject", "enqueue")


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``POST /chat`` body."""

    message: str
    session_id: str | None
    stream: bool | None = None
    """Answer with Server-Sent Events; None: decided by the Accept header."""
    background: bool = False
    """Run it in the background: 202 with a run (``agent/runs``)."""
    enqueue: bool = False
    """``multitask: enqueue``: a busy session queues the run behind, not 409."""
    webhook: str | None = None


def is_valid_session_id(value: str) -> bool:
    return _SESSION_ID.fullmatch(value) is not None


def check_session_id(value: str) -> None:
    if not is_valid_session_id(value):
        raise errors.bad_request(
            "invalid_session_id",
            "session_id must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'.",
        )


def parse_chat(body: bytes, max_message_chars: int) -> ChatRequest:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested input
        raise errors.bad_request("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.bad_request("invalid_request", "The body must be a JSON object.")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise errors.bad_request(
            "invalid_request",
            f"Unknown field {names}; allowed fields are 'message', 'session_id', 'stream',"
            " 'background', 'multitask' and 'webhook'.",
        )
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise errors.bad_request("invalid_request", "'message' must be a non-empty string.")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
        raise errors.bad_request("invalid_request", "'message' is not valid Unicode.") from None
    if len(message) > max_message_chars:
        raise errors.bad_request(
            "message_too_long", f"'message' is longer than {max_message_chars} characters."
        )
    session_id = data.get("session_id")
    if session_id is not None:
        if not isinstance(session_id, str):
            raise errors.bad_request("invalid_request", "'session_id' must be a string.")
        check_session_id(session_id)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("invalid_request", "'stream' must be true or false.")
    background = data.get("background", False)
    if not isinstance(background, bool):
        raise errors.bad_request("invalid_request", "'background' must be true or false.")
    multitask = data.get("multitask", "reject")
    if multitask not in _MULTITASK:
        raise errors.bad_request("invalid_request", "'multitask' must be 'reject' or 'enqueue'.")
    webhook = data.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise errors.bad_request("invalid_webhook", "'webhook' must be a URL.")
    if not background and (webhook is not None or "multitask" in data):
        raise errors.bad_request(
            "invalid_request", "'multitask' and 'webhook' apply to background runs only."
        )
    if background and stream:
        raise errors.bad_request(
            "invalid_request", "A background run answers 202; follow GET /runs/<id>/events."
        )
    return ChatRequest(
        message=message,
        session_id=session_id,
        stream=stream,
        background=background,
        enqueue=multitask == "enqueue",
        webhook=webhook,
    )


@dataclass(frozen=True)
class DecisionsRequest:
    pause_id: str
    verdicts: tuple[Verdict, ...]
    stream: bool | None


MAX_DECISIONS = MAX_PENDING_CALLS
"""As many as a pause may wait for: one request always decides a whole pause."""


def parse_decisions(body: bytes) -> DecisionsRequest:
    """``{"pause_id", "decisions": [{"call_id", "approve", "reason"?}], "stream"?}``; 400
    otherwise."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise errors.bad_request("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict) or set(data) - {"pause_id", "decisions", "stream"}:
        raise errors.bad_request(
            "invalid_request",
            "The body must be an object with 'pause_id' and 'decisions' (and 'stream').",
        )
    pause_id = data.get("pause_id")
    if not isinstance(pause_id, str) or not 0 < len(pause_id) <= 64:
        raise errors.bad_request(
            "invalid_request", "'pause_id' must be the id of the pause being decided."
        )
    decisions = data.get("decisions")
    if not isinstance(decisions, list) or not 0 < len(decisions) <= MAX_DECISIONS:
        raise errors.bad_request(
            "invalid_request", f"'decisions' must be a list of 1-{MAX_DECISIONS} decisions."
        )
    verdicts = tuple(_verdict(entry) for entry in decisions)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("invalid_request", "'stream' must be true or false.")
    return DecisionsRequest(pause_id, verdicts, stream)


def _verdict(entry: object) -> Verdict:
    shape = "Each decision is {'call_id': str, 'approve': bool, 'reason'?: str}."
    if not isinstance(entry, dict) or set(entry) - {"call_id", "approve", "reason"}:
        raise errors.bad_request("invalid_request", shape)
    call_id, approve, reason = entry.get("call_id"), entry.get("approve"), entry.get("reason")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= 128 or not isinstance(approve, bool):
        raise errors.bad_request("invalid_request", shape)
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise errors.bad_request(
            "invalid_request",
            f"'reason' must be a string of at most {MAX_REASON_CHARS} characters.",
        )
    try:
        (reason or "").encode("utf-8")
    except UnicodeEncodeError:
        raise errors.bad_request("invalid_request", "'reason' is not valid Unicode.") from None
    return Verdict(call_id, approve, reason or None)


def parse_key(headers: Headers) -> str | None:
    """The request's ``Idempotency-Key``, or None; 400 when malformed."""
    key = headers.get(KEY_HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise errors.bad_request(
            "invalid_idempotency_key",
            f"{KEY_HEADER} must be 1-255 printable ASCII characters without spaces.",
        )
    return key
