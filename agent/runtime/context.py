"""What the model is sent of a long conversation: a token budget, a running summary, and
the most recent items that fit.

The stored history is never cut; only what one model call sees is. When the history
would pass ``CONTEXT_MAX_TOKENS`` (instructions and tool schemas included), the oldest
part not yet summarised is folded into a running summary written by the model, and the
call is sent the summary plus the newest items that fit. The rules:

* **Never split a tool call from its output.** A cut never lands on a
  ``function_call_output``: the model would see an answer to a call it never made
  (providers answer 400).
* **Cut between turns when possible.** The preferred cut is just before a user message;
  only when a single turn is larger than the budget is it cut inside, at a safe point.
* **Never drop the instructions.** They and the tool schemas are counted first; the
  history gets what is left.
* **A single item too large for the budget is truncated with a marker**, not sent whole.

Token counts are estimated locally (UTF-8 bytes of each item's JSON over four) and
calibrated per session by the ratio of the ``input_tokens`` the provider reported to the
estimate for the same call, so the estimate tracks the real tokenizer without one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents import Agent, Model, RunConfig, Runner, Usage

Item = dict[str, Any]

BYTES_PER_TOKEN = 4
ITEM_OVERHEAD_TOKENS = 4
"""Role markers and separators a provider adds around each message."""
DEFAULT_BUDGET_TOKENS = 32_000
ANSWER_ROOM_TOKENS = 16_384
"""Kept free in the window for the answer when the budget comes from the window."""
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o-mini": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "google/gemini-2.5-flash": 1_048_576,
    "google/gemini-2.5-pro": 1_048_576,
}
TRUNCATED = "[… truncated to fit the model's context: {shown} of {total} characters shown]"
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (written by the assistant):\n"
MIN_RATIO, MAX_RATIO = 0.25, 4.0


def default_budget(model: str) -> int:
    """``CONTEXT_MAX_TOKENS`` when unset: the model's window less room for the answer."""
    window = CONTEXT_WINDOWS.get(model)
    return DEFAULT_BUDGET_TOKENS if window is None else window - ANSWER_ROOM_TOKENS


def estimate(items: Sequence[Item], ratio: float = 1.0) -> int:
    """Estimated tokens of ``items`` as a provider would count them."""
    raw = sum(_size(item) for item in items)
    return math.ceil(raw * ratio)


def estimate_text(text: str, ratio: float = 1.0) -> int:
    return math.ceil((len(text.encode()) / BYTES_PER_TOKEN + ITEM_OVERHEAD_TOKENS) * ratio)


def calibrated(ratio: float, reported: int, estimated: int) -> float:
    """The session's new ratio after a call estimated at ``estimated`` tokens was
    reported as ``reported``: a moving average, bounded so one odd report cannot
    derail it."""
    if reported <= 0 or estimated <= 0:
        return ratio
    observed = min(MAX_RATIO, max(MIN_RATIO, reported / estimated))
    return round(0.5 * ratio + 0.5 * observed, 4)


@dataclass(frozen=True)
class Plan:
    """How to fit a history into the budget."""

    fold: list[Item]
    """Items to fold into the running summary (oldest first); empty: nothing to do."""
    keep: list[Item]
    """The newest items, sent whole (but for truncated single items)."""
    keep_from: int
    """Index in the uncovered items where ``keep`` starts."""


def plan(
    items: Sequence[Item],
    *,
    budget: int,
    fixed: int,
    summary: str | None,
    ratio: float,
    room: float = 1.0,
) -> Plan:
    """Split the uncovered ``items`` (those the current summary does not cover) into a
    part to fold into the summary and a part to keep, so that ``fixed`` (instructions,
    tools, the new message) + the summary + the kept items fit ``budget``. ``room``
    below 1 asks for a tighter fit (after the provider reported an overflow)."""
    target = int(budget * room)
    summary_tokens = estimate_text(summary, ratio) if summary else 0
    if fixed + summary_tokens + estimate(items, ratio) <= target:
        return Plan([], list(items), 0)
    # Room for the summary that folding will produce (at most a quarter of the budget),
    # and the kept items fill only half of what is left: the next turns then fit without
    # folding again, so a summary is written every few turns, not on every one.
    left = max(0, (target - fixed - max(summary_tokens, target // 4)) // 2)
    start = len(items)
    used = 0
    for index in range(len(items) - 1, -1, -1):
        cost = estimate([items[index]], ratio)
        if used + cost > left:
            break
        used, start = used + cost, index
    start = _safe_cut(items, start)
    return Plan(list(items[:start]), list(items[start:]), start)


def _safe_cut(items: Sequence[Item], start: int) -> int:
    """The first index at or after ``start`` where a cut splits no tool call from its
    output, preferring the start of a turn (a user message)."""
    for index in range(start, len(items)):
        if _is_user(items[index]):
            return index
    for index in range(start, len(items)):
        if not _is_tool_output(items[index]):
            return index
    return len(items)


def fit_items(items: Sequence[Item], max_tokens: int, ratio: float = 1.0) -> list[Item]:
    """``items`` with any single item larger than ``max_tokens`` truncated, with a
    marker, to fit it."""
    return [
        truncate(item, max_tokens, ratio) if estimate([item], ratio) > max_tokens else item
        for item in items
    ]


def truncate(item: Item, max_tokens: int, ratio: float = 1.0) -> Item:
    """``item`` with its text cut to about ``max_tokens``, and a marker saying so."""
    limit = max(64, int((max_tokens / max(ratio, MIN_RATIO)) * BYTES_PER_TOKEN * 0.9))
    for key in ("content", "output", "arguments"):
        value = item.get(key)
        if isinstance(value, str):
            return item | {key: _cut(value, limit)}
        if isinstance(value, list):
            parts = [
                part | {"text": _cut(part["text"], limit)}
                if isinstance(part, dict) and isinstance(part.get("text"), str)
                else part
                for part in value
            ]
            return item | {key: parts}
    return item


def summary_message(summary: str) -> Item:
    """The running summary as the model sees it, before the kept items."""
    return {"role": "system", "content": SUMMARY_PREFIX + summary}


def transcript(items: Sequence[Item]) -> str:
    """The plain text of ``items``, one line per message, for the summariser."""
    lines = []
    for item in items:
        kind = item.get("type")
        if kind == "function_call":
            lines.append(f"assistant called {item.get('name')}({item.get('arguments')})")
        elif kind == "function_call_output":
            lines.append(f"tool result: {_text(item.get('output'))}")
        elif "role" in item:
            lines.append(f"{item['role']}: {_text(item.get('content'))}")
    return "\n".join(line for line in lines if line.strip())


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = TRUNCATED.format(shown=limit, total=len(text))
    return text[:limit] + "\n" + marker


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def _size(item: Item) -> float:
    encoded = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
    return len(encoded) / BYTES_PER_TOKEN + ITEM_OVERHEAD_TOKENS


def _is_user(item: Item) -> bool:
    return item.get("role") == "user" and item.get("type", "message") == "message"


def _is_tool_output(item: Item) -> bool:
    return str(item.get("type", "")).endswith("_call_output")


SUMMARIZE_INSTRUCTIONS = (
    "Summarize the conversation so far for your own later use: you will see this summary"
    " instead of the messages it covers. Keep every name, number, date, decision, promise"
    " and open question; drop pleasantries. Start from the earlier summary if there is one"
    " and fold the new messages into it. Plain sentences, no headings."
)


async def summarize(
    model: Model,
    previous: str | None,
    items: Sequence[Item],
    *,
    batch_tokens: int,
    run_config: RunConfig | None = None,
) -> tuple[str, Usage]:
    """A new running summary of ``previous`` plus ``items``, written by ``model`` (no
    tools), and the usage of its calls; ``run_config`` carries the trace's privacy
    (None: the SDK's defaults, which trace the text). The summariser's own request must fit the
    window too, so ``items`` go in batches of at most ``batch_tokens``, each folded into
    the summary the previous one wrote. Raises what a model call raises."""
    writer: Agent[None] = Agent(name="summarizer", instructions=SUMMARIZE_INSTRUCTIONS, model=model)
    spent = Usage()
    summary = previous
    for batch in _batches(items, batch_tokens):
        request = f"Earlier summary:\n{summary}\n\n" if summary else ""
        request += "Messages to fold in:\n" + transcript(batch)
        result = await Runner.run(writer, request, max_turns=1, run_config=run_config)
        spent.add(result.context_wrapper.usage)
        summary = str(result.final_output).strip()
    return summary or "", spent


def _batches(items: Sequence[Item], max_tokens: int) -> list[list[Item]]:
    batches: list[list[Item]] = [[]]
    used = 0
    for item in fit_items(items, max_tokens // 2):
        cost = estimate([item])
        if batches[-1] and used + cost > max_tokens:
            batches.append([])
            used = 0
        batches[-1].append(item)
        used += cost
    return [batch for batch in batches if batch]
