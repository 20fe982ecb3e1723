"""The body of a successful ``POST /chat``, built in one place.

The JSON reply and the ``done`` event of a streamed reply are both this body, so a
field added here reaches both kinds of client.
"""

from __future__ import annotations

import datetime as dt

from agent.turn.outcome import TurnOutcome


def chat_response(outcome: TurnOutcome) -> dict[str, object]:
    answer: dict[str, object] = {
        "session_id": outcome.session_id,
        "reply": outcome.reply,
        "new_session": outcome.new_session,
        "usage": outcome.usage,
        "expires_at": rfc3339(outcome.expire_at),
        "status": outcome.status,
    }
    if outcome.output_json is not None:
        answer["output"] = outcome.output
    if outcome.pending_approvals:
        if outcome.pause_id is not None:  # None: a replay stored before pauses had ids
            answer["pause_id"] = outcome.pause_id
        answer["pending_approvals"] = list(outcome.pending_approvals)
    if outcome.result is not None:
        answer["result"] = outcome.result.as_json()
    if outcome.warnings:
        answer["warnings"] = list(outcome.warnings)
    return answer


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
