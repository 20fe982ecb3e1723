"""The calculate tool: exact arithmetic, and nothing else, in bounded time and memory;
and every tool call bounded by TOOL_TIMEOUT_SECONDS (issue 10 item 3)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from agents import Agent, FunctionTool, OpenAIChatCompletionsModel, Runner, function_tool
from openai import AsyncOpenAI

from agent.base.settings import Settings
from agent.runtime.tools import fit_tools
from agent_examples.demo.tools import MAX_RESULT_BITS, calculate_text, demo_tools, evaluate
from local.demo_model import DemoModelServer
from local.server import LiveServer
from tests.support.constants import MODEL, PROJECT


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("12 * (3 + 4)", 84),
        ("2 ** 10", 1024),
        ("7 / 2", 3.5),
        ("-3 + 5 % 3", -1),
        ("9 // 2", 4),
        ("2 ** -2", 0.25),
        ("(-8) ** 3", -512),
        ("1 ** 99999999999", 1),
        ("(-1) ** 99999999999", -1),
        ("2 ** 9999", 2**9999),
        ("10 ** 3000", 10**3000),
    ],
)
def test_arithmetic(expression: str, expected: float) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('id')", "a + 1", "[1, 2]", "True + 1", "1" * 201],
)
def test_refuses_anything_but_small_arithmetic(expression: str) -> None:
    with pytest.raises((ValueError, SyntaxError)):
        evaluate(expression)


HOSTILE = [
    # nested powers: each step is allowed by an exponent cap, the result is not
    "(((9**99)**99)**99)**99",
    "9**9**9",
    "99**99**99",
    "((2**64)**64)**64",
    "(10**99)**(10**99)",
    "2**10001",
    # huge products and sums of large powers
    "((9**99)**99)*((9**99)**99)*((9**99)**99)",
    "(10**3000)*(10**3000)*(10**3000)*(10**3000)",
    "(2**9999)*(2**9999)",
    "(2**9999+2**9999)*(2**9999)",
    # shifts (not arithmetic this tool offers) and big-number-to-float traps
    "1 << 10**8",
    "1 << 99999999",
    "(2**9999) ** 0.5 * 10.0 ** 308",
    "1.5 ** 99999999999",
    "(2**5000) / (2**-5000)",
    "10.0 ** 400",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_oversized_results_are_refused_fast(expression: str) -> None:
    started = time.perf_counter()
    answer = calculate_text(expression)
    elapsed = time.perf_counter() - started
    assert answer.startswith("error: "), answer
    assert elapsed < 0.05, f"{expression!r} took {elapsed * 1000:.1f} ms"


def test_anything_accepted_finishes_fast() -> None:
    """Random expressions of up to 200 characters: whatever is accepted takes < 50 ms."""
    rng = random.Random(10)
    atoms = ["9", "99", "2", "10", "7.5", "0.5", "3", "12345678901234567890", "-1", "0"]
    ops = ["+", "-", "*", "/", "//", "%", "**", "**", "**", "*"]

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.25:
            return rng.choice(atoms)
        return f"({expr(depth - 1)}{rng.choice(ops)}{expr(depth - 1)})"

    worst = 0.0
    accepted = 0
    for _ in range(3000):
        text = expr(6)[:200]
        started = time.perf_counter()
        answer = calculate_text(text)
        worst = max(worst, time.perf_counter() - started)
        accepted += not answer.startswith("error")
    assert accepted > 300
    assert worst < 0.05, f"slowest accepted or refused expression took {worst * 1000:.1f} ms"
    assert len(str(2**MAX_RESULT_BITS)) < 4300  # Python's int-to-text limit stays out of reach


# -- TOOL_TIMEOUT_SECONDS ---------------------------------------------------------------


def test_every_tool_carries_the_configured_timeout() -> None:
    tools = fit_tools(demo_tools(None), Settings.from_env({"TOOL_TIMEOUT_SECONDS": "2.5"}))
    assert tools and all(isinstance(tool, FunctionTool) for tool in tools)
    assert all(tool.timeout_seconds == 2.5 for tool in tools)  # type: ignore[union-attr]
    assert all(tool.timeout_behavior == "error_as_result" for tool in tools)  # type: ignore[union-attr]
    assert fit_tools(demo_tools(None), Settings())[0].timeout_seconds == 30.0  # type: ignore[union-attr]


def test_a_tool_past_its_timeout_gives_the_model_an_error_and_the_turn_goes_on(
    model: DemoModelServer,
) -> None:
    async def calculate(expression: str) -> str:
        """A tool that never answers in time (its thread keeps running: see tools.py).

        Args:
            expression: ignored.
        """
        await asyncio.to_thread(time.sleep, 3)
        return "too late"

    settings = Settings.from_env({"TOOL_TIMEOUT_SECONDS": "0.3"})
    agent = Agent(
        name="t",
        model=OpenAIChatCompletionsModel(
            model=MODEL,
            openai_client=AsyncOpenAI(base_url=model.base_url, api_key="x", max_retries=0),
        ),
        tools=fit_tools([function_tool(calculate)], settings),
    )

    async def turn() -> tuple[float, str]:
        started = time.monotonic()
        result = await Runner.run(agent, "What is 1 + 1?")
        return time.monotonic() - started, str(result.final_output)

    # asyncio.run then waits for the sleeping thread: nothing can stop it, only the turn
    # stops waiting for it.
    elapsed, reply = asyncio.run(turn())
    assert elapsed < 2.5
    assert "timed out after 0.3 seconds" in reply


# -- on a live server: hostile input does not stall other turns ----------------------------


@pytest.fixture
def live(settings_env: dict[str, str], model: DemoModelServer) -> Iterator[LiveServer]:
    import os

    env = dict(os.environ) | settings_env | {"THREADS": "8", "GOOGLE_CLOUD_PROJECT": PROJECT}
    server = LiveServer(env)
    yield server
    server.stop()


def timed_turn(server: LiveServer, message: str) -> tuple[float, str]:
    started = time.perf_counter()
    status, body, _ = server.call("POST", "/chat", {"message": message})
    assert status == 200, body
    return time.perf_counter() - started, body["reply"]


def test_hostile_expressions_do_not_slow_a_concurrent_turn(live: LiveServer) -> None:
    for _ in range(3):
        timed_turn(live, "warm up")
    baseline = sorted(timed_turn(live, "hello")[0] for _ in range(5))[2]
    hostile = [e for e in HOSTILE if "<<" not in e][:8]  # the demo model quotes arithmetic

    def normal_turns() -> list[float]:
        return [timed_turn(live, "hello again")[0] for _ in range(6)]

    with ThreadPoolExecutor(5) as pool:
        normal = pool.submit(normal_turns)
        # "1 * " makes the demo model see arithmetic and call the tool with all of it.
        attacks = list(pool.map(lambda e: timed_turn(live, f"What is 1 * {e}?"), hostile * 2))
        latencies = normal.result(timeout=60)
    for elapsed, reply in attacks:
        assert "error:" in reply, reply
        assert elapsed < 5, f"a hostile turn took {elapsed:.1f} s"
    median = sorted(latencies)[len(latencies) // 2]
    # Shared 2-core machine: allow noise, but a stalled instance takes seconds to minutes.
    assert median < max(5 * baseline, baseline + 0.5), (baseline, latencies)
    assert max(latencies) < 3.0, latencies
