"""The load-and-fault command and the long-conversation bench work (tiny and fault-free
here; the real runs are ``python -m bench.load_faults`` and ``python -m
bench.context_cost``, see docs/performance.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import context_cost, load_faults
from local.emulators import firestore_emulator_missing

ENVIRON = ("FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")


def test_the_load_command_runs_and_verifies_histories(capsys: pytest.CaptureFixture[str]) -> None:
    if firestore_emulator_missing():
        pytest.skip(firestore_emulator_missing() or "")
    code = load_faults.main(
        ["--sessions", "6", "--turns", "3", "--concurrency", "3", "--no-faults"]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert "consistent histories 6/6" in output and output.rstrip().endswith("PASSED")


def test_history_expectations_across_the_emulator_restart() -> None:
    log = load_faults.SessionLog("s", "alice")
    log.acks = [("t0", 1.0, True), ("t1", 2.0, False), ("t2", 5.0, True), ("t3", 6.0, False)]
    assert log.expected(None) == (["t0", "t1", "t2", "t3"], 0)
    assert log.expected(4.0) == (["t2", "t3"], 2)  # t0, t1 were erased by the restart
    assert log.expected(7.0) == ([], 4)  # nothing acknowledged after the outage began


def test_the_context_bench_runs_both_sides(tmp_path: Path) -> None:
    """``python -m bench.context_cost`` at its smallest: four turns, one with a tool
    call, too short to fold, so both sides send the same."""
    if firestore_emulator_missing():
        pytest.skip(firestore_emulator_missing() or "")
    out = tmp_path / "context.json"
    before = {name: os.environ.get(name) for name in ENVIRON}
    assert context_cost.main(["--lengths", "2", "4", "--last", "2", "--out", str(out)]) == 0
    assert {name: os.environ.get(name) for name in ENVIRON} == before  # put back
    data = json.loads(out.read_text())["context"]
    assert data["lengths"] == [2, 4] and data["not_reached"] == [] and data["tool_turns"] == 1
    rows = {(row["turns"], row["side"]): row["overall"] for row in data["rows"]}
    service, everything = rows[4, "service"], rows[4, "send-everything"]
    for side in (service, everything):
        assert side["model_calls"] == 5  # four turns, one of them two calls
        assert side["reads_per_turn_max"] <= 2 and side["cpu_ms_per_turn_mean"] > 0
    assert service["tokens_per_call_mean"] == everything["tokens_per_call_mean"]
    assert "**8. Long conversations**" in out.with_suffix(".md").read_text()
