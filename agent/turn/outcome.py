"""What a finished turn produced, and its stored form for Idempotency-Key replays."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from agent.results.policy import ResultLink

Usage = dict[str, Any]
"""requests, input_tokens, output_tokens, total_tokens, cost_usd (None: the model's
price is unknown), and ``summary`` (requests, input_tokens, output_tokens) when the
turn summarised the history."""


@dataclass(frozen=True)
class TurnOutcome:
    """A committed turn, as the caller sees it."""

    session_id: str
    reply: str
    new_session: bool
    usage: Usage
    expire_at: dt.datetime
    result: ResultLink | None = None
    warnings: tuple[dict[str, str], ...] = ()
    pending_approvals: tuple[dict[str, str], ...] = ()
    """The tool calls the run paused on (call_id, tool, arguments); none: it completed."""
    pause_id: str | None = None
    """The pause those calls belong to: what their decisions name."""
    output_json: str | None = None
    """An agent's structured output (``output_type``), validated, as JSON text; None: the
    answer is text (or was offloaded to a result file)."""

    @property
    def output(self) -> Any:
        """The structured output's value (only when ``output_json`` is set)."""
        return json.loads(self.output_json) if self.output_json is not None else None

    @property
    def status(self) -> str:
        return "approval_required" if self.pending_approvals else "completed"

    def stored(self) -> dict[str, Any]:
        """The form kept in an Idempotency-Key record (``expire_at`` is the record's)."""
        return {
            "session_id": self.session_id,
            "reply": self.reply,
            "new_session": self.new_session,
            "usage": self.usage,
            # A replay returns the URL as first signed; once it has expired the
            # client re-signs through GET /sessions/<id>/results/<turn_id>.
            "result": self.result.as_json() if self.result else None,
            "warnings": list(self.warnings),
            "pending_approvals": list(self.pending_approvals),
            "pause_id": self.pause_id,
            "output": self.output,
            "has_output": self.output_json is not None,
        }

    @classmethod
    def from_stored(cls, response: dict[str, Any], expire_at: dt.datetime) -> TurnOutcome:
        result = response.get("result")
        return cls(
            session_id=response["session_id"],
            reply=response["reply"],
            new_session=response["new_session"],
            usage=dict(response["usage"]),
            expire_at=expire_at,
            result=ResultLink.from_json(result) if result else None,
            warnings=tuple(response.get("warnings") or ()),
            pending_approvals=tuple(response.get("pending_approvals") or ()),
            pause_id=response.get("pause_id"),
            output_json=json.dumps(response.get("output")) if response.get("has_output") else None,
        )
