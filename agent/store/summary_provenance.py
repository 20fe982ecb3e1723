"""Where a running summary came from: the turns it covers, when and by which model.

The summary replaces the oldest items in what the model is sent, so a reader of the
session (``GET /sessions/<id>``) must be able to tell what it stands for and who wrote
it. Stored beside the summary, in the same commit: a map on the Firestore session
document (``SummaryProvenanceDoc``), a JSON column on SQLite. A summary written before
provenance was kept has none (null).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from agent.store.schema import SUMMARY_AT, SUMMARY_MODEL, SUMMARY_TURNS, SummaryProvenanceDoc

MAX_MODEL_CHARS = 200
"""A model name is configuration, but it is stored: bounded like every stored field."""


@dataclass(frozen=True)
class SummaryProvenance:
    turns: int
    """User messages (turns) among the items the summary covers: it stands for the
    first ``turns`` turns of the conversation, the last of them possibly in part."""
    written_at: dt.datetime
    model: str

    def as_doc(self) -> SummaryProvenanceDoc:
        return {
            SUMMARY_TURNS: self.turns,
            SUMMARY_AT: self.written_at,
            SUMMARY_MODEL: self.model[:MAX_MODEL_CHARS],
        }

    def as_text(self) -> str:
        """The SQLite column: JSON, the time as RFC 3339."""
        doc: dict[str, Any] = dict(self.as_doc())
        doc[SUMMARY_AT] = self.written_at.astimezone(dt.UTC).isoformat()
        return json.dumps(doc)

    @classmethod
    def from_doc(cls, doc: Any) -> SummaryProvenance | None:
        """From a stored map (or the SQLite column's JSON); None when absent or not
        one (a summary written before provenance was kept)."""
        if isinstance(doc, str):
            doc = json.loads(doc)
        if not isinstance(doc, dict):
            return None
        at = doc.get(SUMMARY_AT)
        if isinstance(at, str):
            at = dt.datetime.fromisoformat(at)
        if not isinstance(at, dt.datetime):
            return None
        return cls(int(doc.get(SUMMARY_TURNS) or 0), at, str(doc.get(SUMMARY_MODEL) or ""))
