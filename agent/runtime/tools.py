"""What the service adds to the tools of every agent it runs (``factory.fit``).

Guarantees, for every ``FunctionTool`` of every agent reachable by handoff:

* Each call is bounded by ``TOOL_TIMEOUT_SECONDS`` through the SDK's own tool timeout
  (unless the tool sets its own): on timeout the model gets an error result and the turn
  goes on. The SDK times out async tools only, so write tools ``async def``, with work
  that blocks in a worker thread (``asyncio.to_thread``); such a thread cannot be killed:
  the timeout stops the waiting, not the work. A sync tool runs unbounded, and start-up
  logs a warning naming it.
* A tool needs a person's approval before each call when its code says so
  (``function_tool(..., needs_approval=True)`` or a callable) or ``APPROVAL_REQUIRED_TOOLS``
  names it. The run then pauses (``agent/turn/approvals.py``). Each approved call goes
  through the ``CallGuard`` of the run (``GUARD``), which lets it run at most once per
  pause and call id, and only with the arguments the person was shown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from agents import FunctionTool, Tool
from agents.tool_context import ToolContext

from agent.base.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_FITTED = "__agent_service_fitted__"
"""Marks a tool's invoker as the service's: fitting twice changes nothing."""


class CallGuard(Protocol):
    """Runs an approved call at most once, with the arguments that were approved
    (``agent/turn/approvals.py``): ``invoke`` takes the argument text to run with."""

    async def run(
        self, call_id: str, tool: str, arguments: str, invoke: Callable[[str], Awaitable[Any]]
    ) -> Any: ...


GUARD: ContextVar[CallGuard | None] = ContextVar("agent_tool_guard", default=None)
"""The guard of the run in this context (``guarded_run``)."""


async def guarded_run(guard: CallGuard | None, run: Awaitable[T]) -> T:
    """Await ``run`` with ``guard`` for its approved calls. Set inside the coroutine:
    the SDK's tool tasks, created within it, copy this context."""
    token = GUARD.set(guard)
    try:
        return await run
    finally:
        GUARD.reset(token)


def fit_tools(tools: Sequence[Tool], settings: Settings) -> list[Tool]:
    """``tools`` with the service's bounds (the module's header); tools that are not
    function tools (hosted tools, MCP) are kept as they are."""
    gated = {name.strip() for name in (settings.approval_required_tools or "").split(",")}
    return [
        fit_tool(tool, settings, gated) if isinstance(tool, FunctionTool) else tool
        for tool in tools
    ]


def fit_tool(tool: FunctionTool, settings: Settings, gated: set[str]) -> FunctionTool:
    if getattr(tool.on_invoke_tool, _FITTED, False):
        return tool
    if tool.name in gated or "*" in gated:
        tool = dataclasses.replace(tool, needs_approval=True)
    if tool.timeout_seconds is None:
        try:
            tool = dataclasses.replace(
                tool,
                timeout_seconds=settings.tool_timeout_seconds,
                timeout_behavior="error_as_result",
            )
        except ValueError:  # the SDK refuses a timeout on a sync tool
            log.warning("tool %r is not async: TOOL_TIMEOUT_SECONDS cannot bound it", tool.name)
    if tool.needs_approval is False:
        return _marked(tool, tool.on_invoke_tool)
    return _guarded(tool)


def _guarded(tool: FunctionTool) -> FunctionTool:
    invoke = tool.on_invoke_tool

    async def guarded(context: ToolContext[Any], arguments: str) -> Any:
        guard = GUARD.get()
        if guard is None:  # library use: no store to guard with
            return await invoke(context, arguments)
        return await guard.run(
            context.tool_call_id, tool.name, arguments, lambda approved: invoke(context, approved)
        )

    return _marked(tool, guarded)


def _marked(tool: FunctionTool, invoke: Callable[..., Awaitable[Any]]) -> FunctionTool:
    if invoke is tool.on_invoke_tool:
        try:
            setattr(invoke, _FITTED, True)
            return tool
        except AttributeError:  # a bound method, say: wrap it to mark it
            pass
        inner = invoke

        async def invoke(context: ToolContext[Any], arguments: str) -> Any:
            return await inner(context, arguments)

    setattr(invoke, _FITTED, True)
    return dataclasses.replace(tool, on_invoke_tool=invoke)
