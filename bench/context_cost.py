"""Long conversations: the context budget against sending the whole history, side by side.

``.venv/bin/python -m bench.context_cost`` (or ``make bench``, section ``context``).

Two ``TurnRunner``s hold the same conversation on the Firestore emulator, turn by turn,
interleaved (so a change in the machine's load hits both alike):

* ``service``: as ``agent/service.py`` builds it, with a ``ContextKeeper`` and a
  ``CONTEXT_MAX_TOKENS`` budget, against a demo model with a context window of the
  same size (so a call that did not fit would fail the run, as OpenAI would refuse it);
* ``send-everything``: the same runner without a keeper, the behaviour before issue 12
  and of library use: every call carries the whole history. Its demo model has no
  window, or it would refuse.

Each side's demo model runs in a process of its own (``bench/counted_model.py``) and
reports the size of every request (``local.demo_model.prompt_tokens``). Per turn the
service process's CPU time (``time.process_time()`` around ``TurnRunner.run``: the
calling thread, the event loop thread and the gRPC client's threads; not the model's
nor the emulator's), the Firestore documents read (counted on the real client's gRPC
calls, as ``tests/test_long_conversations.py`` does) and the summary's usage
(``usage.summary``) are recorded. The conversation is run once to the longest length;
the figures for a shorter length are those of its first turns (the conversation and
the demo model are deterministic, so a separate shorter run would be the same turns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from google.cloud import firestore

from agent.base.settings import Settings
from agent.runtime.event_loop import BackgroundLoop
from agent.runtime.factory import build_agent
from agent.runtime.model import build_model
from agent.store.history import HistoryStore
from agent.turn.context_window import ContextKeeper
from agent.turn.runner import TurnRunner
from bench import report
from bench.servers import ROOT
from local.emulators import FirestoreEmulator, firestore_emulator_missing

PROJECT = "bench-context"
LENGTHS = [10, 100, 1000]
BUDGET = 4000
"""Tokens; the window of ``tests/test_long_conversations.py``. Small enough that this
conversation folds well before turn 100 (sending everything takes about 8,000 tokens
per call by then), large enough that 10 turns never fold (under 1,000 per call), so
the 10-turn row shows what the keeper costs when it is not needed."""
LAST = 10
EMULATOR_HEAP_MIB = 4096
SIDES = ("service", "send-everything")

NAMES = ["Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret"]
CITIES = ["Berlin", "Lisbon", "Oslo", "Porto", "Vienna", "Zurich", "Lyon", "Turin", "Ghent"]


def message(turn: int) -> str:
    """The user's message at ``turn`` (from 1): a sentence or two with names and
    numbers; every fourth asks for arithmetic, which the demo model sends to
    ``calculate`` (a tool call, its output and a reply: two model calls)."""
    if turn == 1:
        return (
            "Hi, I am Ada Lovelace and my order number is 4711. "
            "It should reach Berlin by Friday, please keep track of it."
        )
    name, city = NAMES[turn % len(NAMES)], CITIES[(turn * 5) % len(CITIES)]
    n = (turn * 37) % 90 + 10
    kind = turn % 4
    if kind == 0:
        return (
            f"For {name}'s invoice from {city}: what is {n % 13 + 2} * ({n % 7 + 3} + "
            f"{turn % 9 + 1})? Round it if you need to."
        )
    if kind == 1:
        return (
            f"{name} from {city} booked {n} seats for the meeting on the {turn % 28 + 1}th. "
            "Please keep that in mind for later."
        )
    if kind == 2:
        return (
            f"The parcel for {name} in {city} weighs {n} kilograms and costs {n * 3} euros "
            "to ship, according to the warehouse."
        )
    return f"Remind me later that {name} prefers the train from {city} at {turn % 12 + 7} o'clock."


class CountedModel:
    """``bench/counted_model.py`` in its own process group, with its request log."""

    def __init__(self, window: int | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.counted_model", f"--window={window or 0}"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.base_url = str(json.loads(self._line())["base_url"])

    def received(self) -> list[tuple[int, bool, bool]]:
        """``(prompt_tokens, is_summary, refused)`` of each request since the last call."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return [(int(n), bool(summary), bool(no)) for n, summary, no in json.loads(self._line())]

    def _line(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the demo model exited ({self.process.poll()})")
        return line

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF: it stops its server and exits
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        if self.process.stdout is not None:
            self.process.stdout.close()


class ReadCounter:
    """A real Firestore client whose document reads are counted on the way out: each
    document a lookup answers (found or missing) and each document a query returns.
    Only reads, and nothing per byte: the counting runs inside the measured CPU time."""

    def __init__(self) -> None:
        self.client = firestore.Client()
        self.reads = 0
        api = self.client._firestore_api
        get_all, get_one, query = api.batch_get_documents, api.get_document, api.run_query

        def counted_all(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for response in get_all(*args, **kwargs):
                self.reads += 1
                yield response

        def counted_one(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return get_one(*args, **kwargs)

        def counted_query(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for response in query(*args, **kwargs):
                self.reads += response._pb.HasField("document")
                yield response

        api.batch_get_documents, api.get_document = counted_all, counted_one
        api.run_query = counted_query


@dataclass
class Turn:
    """What one turn cost."""

    cpu_ms: float
    wall_ms: float
    reads: int
    calls: list[int]
    """Prompt tokens of each of the agent's model calls, refused ones included."""
    summary_calls: list[int]
    """Prompt tokens of each summarising call."""
    refused: int
    """Calls the model refused as past its window (the turn then folds harder and
    retries once: ``TurnRunner.run``)."""
    summary_tokens: int
    """``usage.summary``: input plus output tokens."""
    compacted: bool


@dataclass
class Side:
    name: str
    runner: TurnRunner
    reads: ReadCounter
    model: CountedModel
    loop: BackgroundLoop
    turns: list[Turn] = field(default_factory=list)

    def turn(self, session_id: str, text: str) -> Turn:
        self.reads.reads = 0
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = self.runner.run(session_id, text, time.monotonic(), owner=None)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        received = self.model.received()  # after the clock: the pipe is the bench's cost
        summary = outcome.usage.get("summary") or {}
        spent = int(summary.get("input_tokens", 0)) + int(summary.get("output_tokens", 0))
        return Turn(
            cpu_ms=cpu * 1000,
            wall_ms=wall * 1000,
            reads=self.reads.reads,
            calls=[tokens for tokens, is_summary, _ in received if not is_summary],
            summary_calls=[tokens for tokens, is_summary, _ in received if is_summary],
            refused=sum(refused for _, _, refused in received),
            summary_tokens=spent,
            compacted=bool(summary),
        )

    def close(self) -> None:
        self.loop.close()
        self.model.stop()


def _side(name: str, env: dict[str, str], budget: int | None) -> Side:
    model = CountedModel(budget)
    overrides = {"OPENAI_BASE_URL": model.base_url, "CONTEXT_MAX_TOKENS": str(budget or BUDGET)}
    settings = Settings.from_env(env | overrides)
    reads = ReadCounter()
    store = HistoryStore(reads.client, ttl_seconds=3600, timeout_seconds=10)
    llm = build_model(settings)
    agent = build_agent(settings, llm)
    loop = BackgroundLoop()
    # As agent/service.py builds it: the agent's own model writes the summaries.
    keeper = ContextKeeper(agent, llm, budget) if budget else None
    runner = TurnRunner(agent, store, loop, settings, context=keeper)
    return Side(name, runner, reads, model, loop)


def measure(
    env: dict[str, str],
    lengths: Sequence[int] = LENGTHS,
    budget: int = BUDGET,
    last: int = LAST,
    max_seconds: float = 1800,
) -> dict[str, Any]:
    """Both sides through one conversation of ``max(lengths)`` turns; figures at each
    length. Past ``max_seconds`` the run stops, and the lengths it did not reach are
    reported as such."""
    lengths = sorted(set(lengths))
    sides = [_side("service", env, budget), _side("send-everything", env, None)]
    started = time.monotonic()
    stopped_early = False
    try:
        for side in sides:  # one-time costs (channels, connections) out of turn 1
            side.runner.run(f"warm-{side.name}", "hello", time.monotonic(), owner=None)
            side.model.received()
        for turn in range(1, lengths[-1] + 1):
            # Alternate which side goes first, so neither always runs right after the other.
            for side in sides if turn % 2 else reversed(sides):
                side.turns.append(side.turn(f"long-{side.name}", message(turn)))
            if turn % 50 == 0:
                print(
                    f"[context] turn {turn}: {time.monotonic() - started:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            if time.monotonic() - started > max_seconds and turn < lengths[-1]:
                stopped_early = True
                break
    finally:
        for side in sides:
            side.close()
    done = len(sides[0].turns)
    measured = [length for length in lengths if length <= done]
    rows = [
        {
            "turns": length,
            "side": side.name,
            "last": _stats(side.turns[max(0, length - last) : length]),
            "overall": _stats(side.turns[:length]),
        }
        for length in measured
        for side in sides
    ]
    return {
        "budget_tokens": budget,
        "last_turns": last,
        "lengths": measured,
        "not_reached": [length for length in lengths if length > done],
        "stopped_early": stopped_early,
        "seconds": round(time.monotonic() - started, 1),
        "turns_run": done,
        "tool_turns": sum(1 for turn in range(1, done + 1) if turn % 4 == 0),
        # Which turns had a call refused (every fourth turn is a tool call's).
        "refused_at": {
            side.name: [n for n, turn in enumerate(side.turns, start=1) if turn.refused]
            for side in sides
        },
        "rows": rows,
        "ratios": _ratios(rows),
    }


def _stats(turns: list[Turn]) -> dict[str, Any]:
    calls = [tokens for turn in turns for tokens in turn.calls]
    return {
        "turns": len(turns),
        "model_calls": len(calls),
        "refused_calls": sum(t.refused for t in turns),
        "tokens_per_call_mean": round(statistics.fmean(calls), 1),
        "tokens_per_call_max": max(calls),
        # Everything the model was sent for the turn, summarising included.
        "input_tokens_per_turn": round(
            statistics.fmean(sum(t.calls) + sum(t.summary_calls) for t in turns), 1
        ),
        "summary_calls": sum(len(t.summary_calls) for t in turns),
        "summary_tokens": sum(t.summary_tokens for t in turns),
        "compacted_turns": sum(t.compacted for t in turns),
        "reads_per_turn_mean": round(statistics.fmean(t.reads for t in turns), 2),
        "reads_per_turn_max": max(t.reads for t in turns),
        "cpu_ms_per_turn_mean": round(statistics.fmean(t.cpu_ms for t in turns), 1),
        "cpu_ms_per_turn_max": round(max(t.cpu_ms for t in turns), 1),
        "wall_ms_per_turn_mean": round(statistics.fmean(t.wall_ms for t in turns), 1),
    }


RATIO_FIELDS = (
    "tokens_per_call_mean",
    "input_tokens_per_turn",
    "reads_per_turn_mean",
    "cpu_ms_per_turn_mean",
)


def _ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Service over send-everything, per length, for the last turns and overall."""
    ratios = []
    for service in (r for r in rows if r["side"] == "service"):
        other = next(
            r for r in rows if r["side"] == "send-everything" and r["turns"] == service["turns"]
        )
        entry: dict[str, Any] = {"turns": service["turns"]}
        for part in ("last", "overall"):
            entry[part] = {
                key: round(service[part][key] / other[part][key], 3) if other[part][key] else None
                for key in RATIO_FIELDS
            }
        ratios.append(entry)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--budget", type=int, default=BUDGET, help="CONTEXT_MAX_TOKENS")
    parser.add_argument("--last", type=int, default=LAST, help="turns in the 'last' figures")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("bench/context_cost.json"))
    args = parser.parse_args(argv)
    reason = firestore_emulator_missing()
    if reason:
        print(f"cannot run the benchmark: {reason}", file=sys.stderr)
        return 2
    from bench.run import machine  # here: bench.run imports every other measurement

    results: dict[str, Any] = {"machine": machine(), "command": "python -m bench.context_cost"}
    # Both sides rewrite their session's tail (up to 512 KiB) on every turn, and the
    # emulator keeps every version in its heap: at 256 MiB it failed at turn 560.
    emulator = FirestoreEmulator(heap_mib=EMULATOR_HEAP_MIB).start()
    try:
        env = dict(os.environ) | {
            "FIRESTORE_EMULATOR_HOST": emulator.host,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "AGENT_MODEL": "demo-model",
            "MODEL_MAX_RETRIES": "0",
            "AUTH_MODE": "none",
        }
        # firestore.Client() reads these from the process environment; put back after,
        # for a caller in the same process (the smoke test runs beside other tests).
        with _environ(FIRESTORE_EMULATOR_HOST=emulator.host, GOOGLE_CLOUD_PROJECT=PROJECT):
            results["context"] = measure(
                env, args.lengths, args.budget, args.last, max_seconds=args.max_seconds
            )
    finally:
        emulator.stop()
    results["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    tables = report.markdown(results)
    args.out.with_suffix(".md").write_text(tables + "\n")
    print(tables)
    print(f"\nWritten to {args.out} and {args.out.with_suffix('.md')}")
    return 0


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    raise SystemExit(main())
