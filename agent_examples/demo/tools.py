"""The demo agent's tools: ``calculate`` (exact arithmetic, in bounded time and memory)
and ``send_message`` (a tool that acts, so it needs a person's approval before each call).

Written as any user's tools are: plain ``async def`` functions made SDK tools with
``function_tool``. The service adds the rest to every tool of every agent it runs
(``agent/runtime/tools.py``): the ``TOOL_TIMEOUT_SECONDS`` bound, ``APPROVAL_REQUIRED_TOOLS``
and the guard that runs an approved call at most once.

``calculate`` accepts arithmetic only and checks the size of every intermediate result
(its bits, before computing it), so anything it accepts finishes in well under 50 ms with
bounded memory; anything else is answered ``error: ...``. A timeout stops the waiting,
not a worker thread, so a tool that computes must bound its own work, as this one does.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import math
import operator
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from agents import FunctionTool, function_tool

log = logging.getLogger(__name__)

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
    logs). ``demo_tools`` makes it need approval."""

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


def demo_tools(outbox: str | None) -> list[FunctionTool]:
    """``calculate``, and ``send_message``, which acts and so waits for a person's
    approval before each call."""
    return [
        function_tool(calculate),
        function_tool(send_message_tool(outbox), needs_approval=True),
    ]
