"""A run's event log as written: a step's client events, deltas coalesced.

Events get their sequence numbers when a step is checkpointed (``RunBackend``), so a live
reader and a replay see the same events with the same ids. Text deltas are coalesced
first, one ``delta`` per run of text between other events: a long answer costs one
event, not one per token.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.runtime.streaming import RunEvent
from agent.store.run_records import NewEvent

MAX_TEXT_CHARS = 7_000
"""Characters of text in one event: under the store's 32 KiB per event
(``run_rules.MAX_EVENT_BYTES``) even at 4 UTF-8 bytes each, with JSON escapes."""


def coalesce(events: Iterable[RunEvent]) -> list[NewEvent]:
    """The step's events to log: adjacent ``delta`` texts joined (and split again into
    events of at most ``MAX_TEXT_CHARS``); a tool's output cut to that size (the
    answer and the history keep all of it)."""
    logged: list[NewEvent] = []
    text: list[str] = []

    def flush() -> None:
        joined = "".join(text)
        text.clear()
        for start in range(0, len(joined), MAX_TEXT_CHARS):
            logged.append(
                NewEvent(type="delta", data={"text": joined[start : start + MAX_TEXT_CHARS]})
            )

    for event in events:
        if event.name == "delta":
            text.append(str(event.data.get("text", "")))
            continue
        flush()
        data = dict(event.data)
        for name in ("output", "arguments"):
            value = data.get(name)
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                data[name] = value[:MAX_TEXT_CHARS] + "…"
                data["truncated"] = True
        logged.append(NewEvent(type=event.name, data=data))
    flush()
    return logged


def status_event(status: str) -> NewEvent:
    """The event logged at each status change."""
    return NewEvent(type="status", data={"status": status})
