"""The agent's tools. Register a new tool by adding its function to ``TOOL_FUNCTIONS``.

Guarantees:

* ``build_tools`` bounds every tool call by ``TOOL_TIMEOUT_SECONDS`` through the SDK's
  own tool timeout: on timeout the model gets an error result and the turn goes on.
  The SDK applies a timeout to async tools only, so tools are ``async def``; work that
  blocks runs in a worker thread (``asyncio.to_thread``). Such a thread cannot be
  killed: the timeout stops the waiting, not the work. A tool that computes must bound
  its own work, as ``calculate`` does.
* A tool that acts needs a person's approval before each call: ``needs_approval`` in
  its code (``send_message``), or ``APPROVAL_REQUIRED_TOOLS``. The run then pauses
  (``agent/turn/approvals.py``). Each approved call goes through the ``CallGuard`` of
  the run (``GUARD``), which lets it run at most once per pause and call id, and only
  with the arguments the person was shown.
* ``calculate`` accepts arithmetic only and checks the size of every intermediate
  result (its bits, before computing it), so anything it accepts finishes in well
  under 50 ms with bounded memory; anything else is answered ``error: ...``.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import logging
import math
import operator
import os
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agents import FunctionTool, function_tool
from agents.tool_context import ToolContext

from agent.base.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

Number = int | float

MAX_RESULT_BITS = 10_000
"""Largest integer any step may produce (about 3,000 decimal digits). Python multiplies
numbers this size in microseconds, and turns them into text well under its own
4,300-digit conversion limit; 9**9**9 would need 10**8 bits and a minute of CPU."""
_MAX_EXPRESSION_CHARS = 200

_SIMPLE: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> Number:
    """Evaluate arithmetic without ``eval``: the model (and so the user) picks the input.
    Raises ValueError (also for results too large), SyntaxError, ZeroDivisionError or
    OverflowError."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError("expression too long")
    result = _eval(ast.parse(expression, mode="eval").body)
    if isinstance(result, float) and not math.isfinite(result):
        raise OverflowError("result out of range")
    return result


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: Number = node.value  # type: ignore[assignment]
        return _checked(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        return _checked(_binary(node.op, left, right))
    raise ValueError("only numbers and + - * / // % ** ( ) are allowed")


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    """One operation, refused before it runs when its result could exceed the bound.
    Operations on floats are constant time (and raise OverflowError past float range);
    only integers grow, so only integer results are bounded ahead."""
    if isinstance(op, ast.Add | ast.Sub):
        if isinstance(left, int) and isinstance(right, int):
            _require_bits(max(_bits(left), _bits(right)) + 1)
        return left + right if isinstance(op, ast.Add) else left - right
    if isinstance(op, ast.Mult):
        if isinstance(left, int) and isinstance(right, int):
            _require_bits(_bits(left) + _bits(right))
        return left * right
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if type(op) in _SIMPLE:
        # Quotients and remainders are no larger than their operands.
        return _SIMPLE[type(op)](left, right)
    raise ValueError("only numbers and + - * / // % ** ( ) are allowed")


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base) > 1:  # 0, 1 and -1 stay small whatever the exponent
            # base**exponent has floor(exponent * log2|base|) + 1 bits. Should the float
            # estimate fall a bit short, _checked refuses the result: one bit over.
            _require_bits(math.floor(exponent * math.log2(abs(base))) + 1)
        return int(base**exponent)
    if isinstance(exponent, int) and abs(exponent) > MAX_RESULT_BITS:
        exponent = float(exponent)  # float pow: constant time; out of range raises
    if isinstance(base, int) and _bits(base) > 1023:
        raise OverflowError("number too large for a fraction")
    result = base**exponent
    if isinstance(result, complex):
        raise ValueError("the result is not a real number")
    return result


def _bits(value: int) -> int:
    return abs(value).bit_length()


def _require_bits(bits: int) -> None:
    if bits > MAX_RESULT_BITS:
        raise ValueError(f"the result would exceed {MAX_RESULT_BITS} bits")


def _checked(value: Number) -> Number:
    if isinstance(value, int) and _bits(value) > MAX_RESULT_BITS:
        raise ValueError(f"the result would exceed {MAX_RESULT_BITS} bits")
    return value


def calculate_text(expression: str) -> str:
    """The tool's answer: the exact result, or ``error: <why>``."""
    try:
        result = evaluate(expression)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        return f"error: {exc}"
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        result = int(result)
    return str(result)


async def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "12 * (3 + 4)".

    Args:
        expression: numbers combined with + - * / // % ** and parentheses.
    """
    # Off the event loop: every turn of the process shares that loop.
    return await asyncio.to_thread(calculate_text, expression)


def send_message_tool(outbox: str | None) -> Callable[..., Awaitable[str]]:
    """The demo tool that acts: ``send_message`` appends to the outbox file (or only
    logs). Gated: ``ACTING_TOOLS`` names it."""

    async def send_message(to: str, text: str) -> str:
        """Send a short text message to someone. Needs a person's approval first.

        Args:
            to: who receives it (a name or address).
            text: the message.
        """
        if outbox is not None:
            line = json.dumps({"to": to, "text": text}, ensure_ascii=False) + "\n"
            await asyncio.to_thread(_append, Path(outbox), line)
        log.info("outbox: message sent", extra={"fields": {"to": to, "chars": len(text)}})
        return f"sent to {to}"

    return send_message


def _append(path: Path, line: str) -> None:
    # The outbox holds message text: the owner's alone (0600), whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as file:
        file.write(line)


TOOL_FUNCTIONS: list[Callable[..., Awaitable[str]]] = [calculate]
"""The agent's tools, as async functions; ``build_tools`` makes them SDK tools (and adds
``send_message``)."""

ACTING_TOOLS = frozenset({"send_message"})
"""Tools that act on the world: they need approval whatever the settings say."""


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


def build_tools(
    settings: Settings, functions: list[Callable[..., Awaitable[str]]] | None = None
) -> list[FunctionTool]:
    """Every tool (``TOOL_FUNCTIONS`` and ``send_message`` unless given), each call
    bounded by ``TOOL_TIMEOUT_SECONDS``; a timeout becomes an error result for the model
    (the SDK's ``error_as_result``), not a failed turn. Tools that need approval (see
    the header) are marked so and guarded."""
    if functions is None:
        functions = [*TOOL_FUNCTIONS, send_message_tool(settings.outbox_path)]
    gated = {name.strip() for name in (settings.approval_required_tools or "").split(",")}
    tools = []
    for function in functions:
        name = function.__name__
        needs = name in ACTING_TOOLS or name in gated or "*" in gated
        tool = function_tool(
            function,
            timeout=settings.tool_timeout_seconds,
            timeout_behavior="error_as_result",
            needs_approval=needs,
        )
        tools.append(_guarded(tool) if needs else tool)
    return tools


def _guarded(tool: FunctionTool) -> FunctionTool:
    invoke = tool.on_invoke_tool

    async def guarded(context: ToolContext[Any], arguments: str) -> Any:
        guard = GUARD.get()
        if guard is None:  # library use: no store to guard with
            return await invoke(context, arguments)
        return await guard.run(
            context.tool_call_id, tool.name, arguments, lambda approved: invoke(context, approved)
        )

    return dataclasses.replace(tool, on_invoke_tool=guarded)
