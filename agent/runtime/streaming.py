"""A streamed agent run: started on the background loop, its events read from a thread.

The SDK's ``Runner.run_streamed`` must run on the one event loop (``event_loop.py``),
while the HTTP response is written by the request's thread. A thread-safe queue
carries the events across: the loop puts each one as the SDK produces it, and the
request thread takes them with a timeout, so it can notice the deadline and send
keep-alives while the model is silent. Only the events a client can use pass:
text deltas, tool calls and tool results.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agents import Agent, RunConfig, Runner, RunResultStreaming, RunState
from agents.memory import Session
from agents.stream_events import StreamEvent as SdkEvent

from agent.runtime.deadline import within
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.tools import CallGuard, guarded_run

_TEXT_DELTA = "response.output_text.delta"
RunInput = str | RunState[Any, Any]
"""What a run starts from: the user's message, or a paused run's state to resume."""


@dataclass(frozen=True)
class RunEvent:
    """What a client sees: ``name`` is the SSE event name, ``data`` its JSON."""

    name: str
    data: dict[str, Any]


class _Finished:
    """Put on the queue after the last event."""


_FINISHED = _Finished()


def translate(event: SdkEvent) -> RunEvent | None:
    """The client-facing form of an SDK event, or None for events clients don't need."""
    if event.type == "raw_response_event":
        if getattr(event.data, "type", None) == _TEXT_DELTA:
            return RunEvent("delta", {"text": str(getattr(event.data, "delta", ""))})
        return None
    if event.type != "run_item_stream_event":
        return None
    raw = event.item.raw_item
    if event.name == "tool_called":
        return RunEvent(
            "tool_call",
            {
                "call_id": str(_field(raw, "call_id") or ""),
                "name": str(_field(raw, "name") or ""),
                "arguments": str(_field(raw, "arguments") or ""),
            },
        )
    if event.name == "tool_output":
        output = _field(raw, "output")
        return RunEvent(
            "tool_result",
            {
                "call_id": str(_field(raw, "call_id") or ""),
                "output": output if isinstance(output, str) else json.dumps(output, default=str),
            },
        )
    return None


def _field(raw: Any, name: str) -> Any:
    """Raw items are pydantic models or plain dicts, depending on where they came from."""
    return raw.get(name) if isinstance(raw, dict) else getattr(raw, name, None)


class StreamedRun:
    """One agent run streaming on the background loop; read it from one thread."""

    def __init__(
        self,
        loop: BackgroundLoop,
        agent: Agent[Any],
        message: RunInput,
        session: Session,
        *,
        max_turns: int,
        deadline: float,
        run_config: RunConfig | None = None,
        guard: CallGuard | None = None,
        context: Any = None,
    ) -> None:
        """``message``: the user's message, or a paused run's state to resume;
        ``guard``: what approved calls run through (``tools.guarded_run``); ``context``:
        the run context its tools get."""
        self._events: queue.SimpleQueue[RunEvent | _Finished] = queue.SimpleQueue()
        self._deadline = deadline
        self._run_config = run_config
        self._guard = guard
        self._context = context
        self._task = loop.submit(self._run(agent, message, session, max_turns))

    async def _run(
        self,
        agent: Agent[Any],
        message: RunInput,
        session: Session,
        max_turns: int,
    ) -> RunResultStreaming:
        # The inner coroutine is created here, on the loop: a run cancelled before it
        # started then leaves no coroutine behind that was never awaited.
        pump = self._pump(agent, message, session, max_turns)
        return await within(self._deadline, guarded_run(self._guard, pump))

    async def _pump(
        self,
        agent: Agent[Any],
        message: RunInput,
        session: Session,
        max_turns: int,
    ) -> RunResultStreaming:
        result = Runner.run_streamed(
            agent,
            message,
            session=session,
            max_turns=max_turns,
            run_config=self._run_config,
            context=self._context,
        )
        try:
            async for event in result.stream_events():
                translated = translate(event)
                if translated is not None:
                    self._events.put(translated)
        except asyncio.CancelledError:
            result.cancel()  # stops the SDK's own background tasks too
            raise
        finally:
            self._events.put(_FINISHED)
        return result

    def events(self, idle_seconds: float) -> Iterator[RunEvent | None]:
        """The run's events as they come, and None after each ``idle_seconds`` of
        silence. Ends when the run has ended; raises TimeoutError at the deadline."""
        while True:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                item = self._events.get(timeout=min(left, idle_seconds))
            except queue.Empty:
                yield None
                continue
            if isinstance(item, _Finished):
                return
            yield item

    def result(self) -> RunResultStreaming:
        """The finished run, once ``events`` has ended; raises what the run raised."""
        return self._task.result(timeout=5)

    def cancel(self) -> None:
        """Stop the run; returns once it has stopped (or after a grace period)."""
        self._task.cancel()
