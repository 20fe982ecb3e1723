"""The load-and-fault command works (tiny and fault-free here; the real run is
``python -m bench.load_faults``, see docs/performance.md)."""

from __future__ import annotations

import pytest

from bench import load_faults
from local.emulators import firestore_emulator_missing


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
