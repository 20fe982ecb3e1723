"""What a model call is sent of a long history: the cut and the truncation rules of
``agent/runtime/context.py``, on histories built to tempt them."""

from __future__ import annotations

from typing import Any

from agent.runtime import context


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(n: int) -> dict[str, Any]:
    return {"type": "function_call", "call_id": f"c{n}", "name": "calculate", "arguments": "{}"}


def output(n: int) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": f"c{n}", "output": "42" * 50}


def answer(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def history(turns: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for n in range(turns):
        items += [user(f"question {n} " + "x" * 200), call(n), output(n), answer("y" * 200)]
    return items


def test_a_history_that_fits_is_sent_whole() -> None:
    items = history(3)
    plan = context.plan(items, budget=100_000, fixed=100, summary=None, ratio=1.0)
    assert plan.fold == [] and plan.keep == items


def test_the_cut_lands_on_a_turn_and_never_between_a_call_and_its_output() -> None:
    items = history(40)
    for budget in range(1500, 6000, 137):  # many budgets, many natural cut points
        plan = context.plan(items, budget=budget, fixed=200, summary="s", ratio=1.0)
        assert plan.fold and plan.keep
        assert plan.keep[0]["role"] == "user"  # the start of a turn
        kept_calls = {i["call_id"] for i in plan.keep if i.get("type") == "function_call"}
        kept_outputs = {i["call_id"] for i in plan.keep if i.get("type") == "function_call_output"}
        assert kept_outputs <= kept_calls
        assert plan.fold + plan.keep == items


def test_one_turn_larger_than_the_budget_is_cut_inside_but_not_inside_a_pair() -> None:
    items = [user("q"), *(x for n in range(30) for x in (call(n), output(n))), answer("a")]
    plan = context.plan(items, budget=1200, fixed=100, summary=None, ratio=1.0)
    assert plan.fold and plan.keep[0].get("type") != "function_call_output"


def test_a_single_item_too_large_is_truncated_with_a_marker() -> None:
    big = user("z" * 100_000)
    (fitted,) = context.fit_items([big], 1000)
    assert len(fitted["content"]) < 5000 and "truncated to fit" in fitted["content"]
    assert context.fit_items([user("small")], 1000) == [user("small")]


def test_calibration_moves_toward_the_providers_count_and_stays_bounded() -> None:
    assert context.calibrated(1.0, 800, 1000) == 0.9
    assert context.calibrated(1.0, 1_000_000, 10) == (1.0 + context.MAX_RATIO) / 2
    assert context.calibrated(1.3, 0, 1000) == 1.3


def test_the_default_budget_comes_from_the_models_window() -> None:
    assert context.default_budget("gpt-4o-mini") == 128_000 - context.ANSWER_ROOM_TOKENS
    assert context.default_budget("some-local-model") == 32_000
