"""Keeping one turn's model calls inside ``CONTEXT_MAX_TOKENS``.

Before the run, the turn plans what its model calls will see (``runtime/context.py``
has the rules): when the claimed history would pass the budget, the oldest part not yet
summarised is folded into the running summary by one model call, and the new summary
is handed to the session, which writes it in the turn's own commit: a summary always
covers stored items, and a failed turn leaves the old one. During the run, a filter on
every model call replaces the folded items with the summary and truncates any single
item too large for the budget. After the run, the provider's reported input tokens
calibrate the session's estimate. A summary is stored with its provenance (the turns it
covers, when, which model), which ``GET /sessions/<id>`` shows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from agents import Agent, Model, RunConfig, Usage
from agents.run_config import CallModelData, ModelInputData

from agent.base.clock import utc_now
from agent.base.settings import Settings
from agent.runtime import context
from agent.runtime.deadline import within
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import reachable
from agent.runtime.sdk_traces import run_tracing
from agent.store.history import Claim, Summary
from agent.store.session import FirestoreSession
from agent.store.summary_provenance import SummaryProvenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """What this turn's model calls are sent of the history."""

    summary: str | None
    keep_from: int
    """Leading items of the claimed (uncovered) history that the summary now covers."""
    estimated: int
    """Uncalibrated estimate of the first call's input, for calibration."""
    compacted: bool
    """A summary was written this turn."""
    summary_usage: Usage | None = None


class ContextKeeper:
    """Plans each turn's window and keeps every model call of the turn inside it."""

    def __init__(
        self,
        agent: Agent[Any],
        summary_model: Model,
        budget: int,
        *,
        summary_model_name: str = "",
        settings: Settings | None = None,
    ) -> None:
        """``settings`` decide what the summariser's traces carry (None: no text)."""
        self.budget = budget
        self._settings = settings or Settings()
        self._summary_model = summary_model
        self._summary_model_name = summary_model_name or _name_of(summary_model)
        # A handoff sends the next call another agent's instructions and tools: room is
        # kept for the largest of them.
        self._fixed = max(
            context.estimate_text(str(each.instructions or "")) + _tools_tokens(each)
            for each in reachable(agent)
        )

    def prepare(
        self,
        session: FirestoreSession,
        claim: Claim,
        message: str,
        loop: BackgroundLoop,
        deadline: float,
        *,
        room: float = 1.0,
    ) -> Window:
        """The window for this turn; folds and summarises when the history would pass
        the budget (``room`` below 1: a tighter fit, after the provider overflowed).
        Raises what the summary call raises; nothing is written then."""
        previous = claim.summary.text if claim.summary else None
        ratio = claim.token_ratio
        fixed = self._fixed + context.estimate_text(message)
        plan = context.plan(
            claim.history,
            budget=self.budget,
            fixed=int(fixed * ratio),
            summary=previous,
            ratio=ratio,
            room=room,
        )
        summary, usage = previous, None
        if plan.fold:
            summary, usage = loop.run(
                within(
                    deadline,
                    context.summarize(
                        self._summary_model,
                        previous,
                        plan.fold,
                        batch_tokens=max(256, int(self.budget * room) // 2),
                        max_chars=context.summary_cap(self.budget),
                        run_config=RunConfig(
                            **run_tracing(self._settings, "summarizer", session.session_id)
                        ),
                    ),
                ),
                timeout=deadline - time.monotonic(),
            )
            covered = (claim.summary.items if claim.summary else 0) + plan.keep_from
            offset = claim.item_ends[plan.keep_from - 1]
            before = claim.summary.provenance if claim.summary else None
            turns = (before.turns if before else 0) + sum(map(context.is_user, plan.fold))
            provenance = SummaryProvenance(turns, utc_now(), self._summary_model_name)
            session.set_summary(Summary(summary, covered, offset, provenance))
            log.info(
                "context compacted",
                extra={"fields": {"folded_items": len(plan.fold), "summary_chars": len(summary)}},
            )
        estimated = fixed + context.estimate(plan.keep)
        if summary:
            estimated += context.estimate_text(summary)
        return Window(summary, plan.keep_from, int(estimated), bool(plan.fold), usage)

    def input_filter(self, window: Window) -> Any:
        """The SDK's ``call_model_input_filter`` for this turn."""
        max_item = max(256, self.budget // 2)

        def keep_inside(data: CallModelData[Any]) -> ModelInputData:
            items = [dict(item) for item in data.model_data.input[window.keep_from :]]
            if window.summary:
                items = [context.summary_message(window.summary), *items]
            fitted = context.fit_items(items, max_item)
            return ModelInputData(input=fitted, instructions=data.model_data.instructions)  # type: ignore[arg-type]

        return keep_inside

    @staticmethod
    def calibrate(session: FirestoreSession, claim: Claim, window: Window, reported: int) -> None:
        """Record the session's new token ratio from the first call's reported input."""
        ratio = context.calibrated(claim.token_ratio, reported, window.estimated)
        session.set_token_ratio(ratio)


def _tools_tokens(agent: Agent[Any]) -> int:
    handoffs: list[dict[str, Any]] = [
        {"name": getattr(h, "tool_name", None) or getattr(h, "name", ""), "parameters": {}}
        for h in agent.handoffs
    ]
    schemas = handoffs + [
        {
            "name": getattr(tool, "name", ""),
            "description": getattr(tool, "description", ""),
            "parameters": getattr(tool, "params_json_schema", {}),
        }
        for tool in agent.tools
    ]
    return context.estimate_text(json.dumps(schemas)) if schemas else 0


def _name_of(model: Model) -> str:
    """The model's name as the SDK's models carry it (through wrappers with ``inner``),
    shown with each summary it writes; "" when it has none."""
    while not hasattr(model, "model") and hasattr(model, "inner"):
        model = model.inner
    return str(getattr(model, "model", ""))
