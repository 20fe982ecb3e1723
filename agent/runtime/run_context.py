"""What a tool knows about the request it runs for: the SDK's run context.

Every run gets a ``RunContext`` as its ``context`` (``Runner.run(..., context=...)``); a
tool reads it from its first parameter, ``RunContextWrapper[RunContext].context`` (or
``ToolContext``), to act for the right user::

    @function_tool
    async def my_orders(ctx: RunContextWrapper[RunContext]) -> str:
        return await orders_of(ctx.context.principal)

It is never stored: the session's items do not carry it, and a paused run's stored state
keeps an empty context in its place (``agent/turn/approvals.py``); a resume builds it again
from the resuming request, so a tool run after an approval acts for whoever resumed (the
session's owner: a session answers its owner only).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """The caller and the request a run serves."""

    principal: str | None
    """Who is calling, as authenticated (``AUTH_MODE``): a Google account's email, an
    API key's name, or ``local``; None only in library use."""
    session_id: str
    """The conversation."""
    request_id: str | None
    """The request's id, as in its ``X-Request-Id`` header and the logs."""
