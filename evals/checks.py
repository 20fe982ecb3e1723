"""What must hold after one turn, checked against what the API answered and stored.

Every check returns the reasons it failed, each naming what was expected and what was
observed; an empty list is a pass. Tool calls are matched by name and by argument checks:
a plain value must equal the argument, ``{"contains": s}`` and ``{"regex": r}`` test its
text, ``{"equals": v}`` compares any JSON value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema


@dataclass(frozen=True)
class Call:
    """A tool call as the session's history stored it, with its output if it has one."""

    name: str
    arguments: Any
    output: str | None = None

    def show(self) -> str:
        if isinstance(self.arguments, dict):
            args = ", ".join(f"{k}={_compact(v)}" for k, v in self.arguments.items())
        else:
            args = _compact(self.arguments)
        return f"{self.name}({args})"


@dataclass
class Observed:
    """One turn as the caller saw it: the response body, its latency and the tool calls
    the turn added to the history."""

    status_code: int
    body: dict[str, Any]
    latency_ms: float
    calls: list[Call] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.status_code != 200:
            code = (self.body.get("error") or {}).get("code", "?")
            return f"HTTP {self.status_code} {code}"
        return str(self.body.get("status", "?"))

    @property
    def reply(self) -> str:
        return str(self.body.get("reply") or "")

    @property
    def pending(self) -> list[Call]:
        return [
            Call(str(p.get("tool")), _parsed(p.get("arguments")))
            for p in self.body.get("pending_approvals") or []
        ]

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else {}


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _parsed(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def value_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        ((how, want),) = expected.items()
        if how == "equals":
            return bool(want == actual)
        text = actual if isinstance(actual, str) else _compact(actual)
        if how == "contains":
            return str(want) in text
        return re.search(str(want), text) is not None
    return bool(expected == actual)


def call_matches(expected: dict[str, Any], actual: Call) -> bool:
    if expected["name"] != actual.name:
        return False
    wanted = expected.get("arguments") or {}
    args = actual.arguments if isinstance(actual.arguments, dict) else {}
    if any(key not in args or not value_matches(v, args[key]) for key, v in wanted.items()):
        return False
    return "output" not in expected or (
        actual.output is not None and value_matches(expected["output"], actual.output)
    )


def show_value(expected: Any) -> str:
    """A check as people read it: ``"84"``, ``~"sent to"`` (contains), ``/re/`` (regex)."""
    if isinstance(expected, dict):
        ((how, want),) = expected.items()
        if how == "contains":
            return f"~{json.dumps(want, ensure_ascii=False)}"
        if how == "regex":
            return f"/{want}/"
        expected = want
    return _compact(expected)


def show_expected(calls: list[dict[str, Any]]) -> str:
    shown = []
    for call in calls:
        args = ", ".join(f"{k}={show_value(v)}" for k, v in (call.get("arguments") or {}).items())
        output = f" -> {show_value(call['output'])}" if "output" in call else ""
        shown.append(f"{call['name']}({args}){output}")
    return "[" + ", ".join(shown) + "]"


def show_actual(calls: list[Call]) -> str:
    shown = [
        c.show() + (f" -> {_compact(c.output)}" if c.output is not None else "") for c in calls
    ]
    return "[" + ", ".join(shown) + "]"


def trajectory_matches(mode: str, expected: list[dict[str, Any]], actual: list[Call]) -> bool:
    if mode == "exact":
        return len(expected) == len(actual) and all(
            call_matches(e, a) for e, a in zip(expected, actual, strict=True)
        )
    if mode == "in_order":  # the expected calls, in this order, others allowed between
        position = 0
        for call in actual:
            if position < len(expected) and call_matches(expected[position], call):
                position += 1
        return position == len(expected)
    # any_order: each expected call matched by a different actual call
    free = list(actual)
    for want in expected:
        match = next((c for c in free if call_matches(want, c)), None)
        if match is None:
            return False
        free.remove(match)
    return True


def check_turn(expect: dict[str, Any], seen: Observed) -> list[str]:
    """Every deterministic check of ``expect``; the rubric is the judge's (judge.py)."""
    failures: list[str] = []
    status = expect.get("status", "completed")
    if seen.status != status:
        detail = (
            (seen.body.get("error") or {}).get("message", "") if seen.status_code != 200 else ""
        )
        failures.append(
            f"status: expected {status}, got {seen.status}" + (f" ({detail})" if detail else "")
        )
    tools = expect.get("tools")
    if tools is not None:
        mode = tools.get("match", "exact")
        if not trajectory_matches(mode, tools["calls"], seen.calls):
            failures.append(
                f"tool calls ({mode}): expected {show_expected(tools['calls'])},"
                f" got {show_actual(seen.calls)}"
            )
    pending = expect.get("pending")
    if pending is not None and not trajectory_matches("exact", pending, seen.pending):
        failures.append(
            f"pending approvals: expected {show_expected(pending)}, got {show_actual(seen.pending)}"
        )
    failures += _reply_failures(expect.get("reply") or {}, seen)
    if expect.get("result_link"):
        result = seen.body.get("result")
        if not (isinstance(result, dict) and str(result.get("url", "")).startswith("http")):
            failures.append(f"result link: expected a `result` with a URL, got {result!r}")
    failures += _ceiling_failures(expect, seen)
    return failures


def _reply_failures(reply: dict[str, Any], seen: Observed) -> list[str]:
    failures = []
    text = seen.reply
    for part in reply.get("contains", []):
        if part.lower() not in text.lower():
            failures.append(f"reply: expected it to contain {part!r}, got {_clip(text)!r}")
    for part in reply.get("not_contains", []):
        if part.lower() in text.lower():
            failures.append(f"reply: expected it not to contain {part!r}, got {_clip(text)!r}")
    if "regex" in reply and re.search(reply["regex"], text) is None:
        failures.append(f"reply: expected a match of /{reply['regex']}/, got {_clip(text)!r}")
    if "json_schema" in reply:
        # Structured output arrives as `output`; a plain reply must itself be JSON.
        value = seen.body["output"] if "output" in seen.body else _parsed(text)
        problem = next(
            iter(jsonschema.Draft202012Validator(reply["json_schema"]).iter_errors(value)), None
        )
        if problem is not None:
            failures.append(f"reply: does not match the JSON Schema: {problem.message}")
    return failures


def _ceiling_failures(expect: dict[str, Any], seen: Observed) -> list[str]:
    failures = []
    if "max_latency_ms" in expect and seen.latency_ms > expect["max_latency_ms"]:
        failures.append(
            f"latency: {seen.latency_ms:.0f} ms over the ceiling {expect['max_latency_ms']} ms"
        )
    tokens = seen.usage.get("total_tokens")
    if "max_tokens" in expect and isinstance(tokens, int) and tokens > expect["max_tokens"]:
        failures.append(f"tokens: {tokens} over the ceiling {expect['max_tokens']}")
    cost = seen.usage.get("cost_usd")
    # A model without a price reports no cost: nothing to hold against the ceiling.
    if "max_cost_usd" in expect and isinstance(cost, int | float) and cost > expect["max_cost_usd"]:
        failures.append(f"cost: ${cost} over the ceiling ${expect['max_cost_usd']}")
    return failures


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
