"""A streamed ``POST /chat``: the turn's events as Server-Sent Events.

The wire format (each event's data is one line of JSON), in this order::

    event: context_compacted {"folded_items", "summary_chars"}  the turn folded the oldest
                                                          history into the running summary
    event: delta         {"text": "..."}                  text as the model writes it
    event: tool_call     {"call_id", "name", "arguments"}
    event: tool_result   {"call_id", "output"}
    event: deltas_stopped {"sent_bytes": n}               the size cap was reached: the
                                                          rest is in done (or its result)
    event: approval_required {"pending_approvals": [...]} the run paused (stored): decide
    event: done          the body a JSON request would have got (chat_response.py)
    event: error         {"error": {"code", "message"}}   and the stream ends

Only ``delta``, ``tool_call`` and ``tool_result`` count against the size cap; the
others always arrive (``tests/test_sse_events.py`` holds this list to the code and to
openapi.yaml).

Lines starting with ``:`` are comments (keep-alives). Errors found before the stream
starts (bad input, a busy session, storage down) are ordinary JSON responses with
their status; once the ``200`` is sent, failures can only arrive as ``error`` events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterator

from flask import Response
from werkzeug.datastructures import MIMEAccept

from agent.api.responses import chat_response
from agent.base import errors
from agent.base.settings import Settings
from agent.runtime.streaming import RunEvent
from agent.turn.outcome import TurnOutcome, Usage

log = logging.getLogger("agent.http")

KEEPALIVE_SECONDS = 1.0
"""Silence after which a comment is sent: a client that went away is noticed only
when a write fails, and proxies drop connections that say nothing."""

MIMETYPE = "text/event-stream"

EVENTS = (
    "context_compacted",
    "delta",
    "tool_call",
    "tool_result",
    "deltas_stopped",
    "approval_required",
    "done",
    "error",
)
"""Every event a stream may send, in the order they come."""
CAPPED = frozenset({"delta", "tool_call", "tool_result"})
"""The events the size cap stops (``event_budget``); the rest are small and always sent."""


def event_budget(settings: Settings) -> int:
    """Bytes of text and tool events a stream sends before ``deltas_stopped``. With a
    results bucket, an answer past the inline limit is offloaded and reaches the client
    as ``done``'s ``result``: streaming it whole would defeat that."""
    if settings.results_bucket is None:
        return settings.stream_max_delta_bytes
    return min(settings.stream_max_delta_bytes, settings.result_inline_max_bytes)


def wants_stream(flag: bool | None, accept: MIMEAccept) -> bool:
    """The body's ``stream`` decides; without it, an Accept header that prefers SSE."""
    if flag is not None:
        return flag
    return accept.best_match(["application/json", MIMETYPE]) == MIMETYPE


def frame(event: str, data: object) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def sse_response(
    events: Generator[RunEvent | TurnOutcome | None, None, None],
    *,
    max_event_bytes: int,
    request_id: str,
    on_end: Callable[[str, Usage | None], None],
) -> Response:
    body = _body(events, max_event_bytes, request_id, on_end)
    response = Response(body, mimetype=MIMETYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # no proxy buffering of the stream
    return response


def _body(
    events: Generator[RunEvent | TurnOutcome | None, None, None],
    max_event_bytes: int,
    request_id: str,
    on_end: Callable[[str, Usage | None], None],
) -> Iterator[bytes]:
    sent, capped = 0, False
    ending, usage = "disconnected", None
    try:
        yield b": stream open\n\n"  # sends the headers now
        for item in events:
            if item is None:
                yield b": keep-alive\n\n"
            elif isinstance(item, TurnOutcome):
                ending, usage = "done", item.usage
                yield frame("done", chat_response(item))
            elif item.name not in CAPPED:
                yield frame(item.name, item.data)
            elif not capped:
                chunk = frame(item.name, item.data)
                if sent + len(chunk) > max_event_bytes:
                    # The rest arrives whole in the done event; the body stays bounded.
                    capped = True
                    yield frame("deltas_stopped", {"sent_bytes": sent})
                    continue
                sent += len(chunk)
                yield chunk
    except errors.ApiError as error:
        ending = error.code
        yield frame("error", error.body())
    except Exception as exc:
        ending = "internal_error"
        log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": request_id}})
        yield frame("error", errors.internal_error().body(request_id))
    finally:
        events.close()  # on a disconnect: cancels the run and releases the session
        on_end(ending, usage)
