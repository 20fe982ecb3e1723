"""The calculate tool: exact arithmetic, and nothing else."""

from __future__ import annotations

import pytest

from agent.runtime.tools import evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("12 * (3 + 4)", 84), ("2 ** 10", 1024), ("7 / 2", 3.5), ("-3 + 5 % 3", -1), ("9 // 2", 4)],
)
def test_arithmetic(expression: str, expected: float) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('id')", "a + 1", "9 ** 9 ** 9", "[1, 2]", "True + 1", "1" * 201],
)
def test_refuses_anything_but_small_arithmetic(expression: str) -> None:
    with pytest.raises((ValueError, SyntaxError)):
        evaluate(expression)
