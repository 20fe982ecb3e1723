"""The agent's tools. Register a new tool by adding it to ``TOOLS``."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

from agents import FunctionTool, function_tool

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_MAX_EXPRESSION_CHARS = 200
_MAX_EXPONENT = 100  # 10**100 is fine; 9**9**9 would pin a CPU for minutes


def evaluate(expression: str) -> float | int:
    """Evaluate arithmetic without ``eval``: the model (and so the user) picks the input."""
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError("expression too long")
    return _eval(ast.parse(expression, mode="eval").body)


def _eval(node: ast.expr) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: float | int = node.value  # type: ignore[assignment]
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ValueError("only numbers and + - * / // % ** ( ) are allowed")


@function_tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "12 * (3 + 4)".

    Args:
        expression: numbers combined with + - * / // % ** and parentheses.
    """
    try:
        result = evaluate(expression)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)


TOOLS: list[FunctionTool] = [calculate]
