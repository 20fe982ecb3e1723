"""The eval gate (evals/): cases as data, run over the HTTP API, and the verdict.

The runner is run as ``make eval`` runs it (``python -m evals`` in the repository, the
local stack started like ``make run`` with the demo model), and against a service at a URL
with a credential. A change to the agent's instructions that stops its tool calls must
fail the gate, naming the case and the expected and actual trajectory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from evals.cases import CASES_DIR, CaseError, load_case, load_cases
from evals.checks import Call, Observed, check_turn, trajectory_matches
from evals.client import auth_headers
from evals.run import main
from local.demo_model import DemoModelServer
from local.server import LiveServer
from tests.support.constants import ALICE_KEY, API_KEYS, REPO_ROOT

CASE_NAMES = sorted(p.stem for p in CASES_DIR.glob("*.json"))
SEED_KINDS = {
    "calculator_trajectory",  # a tool trajectory
    "memory_across_turns",
    "approval_pause",
    "unsafe_call_refused",  # a refused tool call that would act
    "large_result_link",
}
MODEL_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MODEL_PROVIDER", "AGENT_MODEL", "EVAL_URL")


def run_make_eval(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``make eval``'s command (``$(BIN)/python -m evals``), in a clean model environment."""
    base = {k: v for k, v in os.environ.items() if k not in MODEL_ENV and not k.startswith("EVAL_")}
    return subprocess.run(
        [sys.executable, "-m", "evals", "--junit", str(tmp_path / "junit.xml")],
        cwd=REPO_ROOT,
        env=base | {"EVAL_REPORT_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_make_eval_runs_the_runner() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "eval: $(VENV)/.local\n\t$(BIN)/python -m evals $(EVAL_ARGS)\n" in makefile


def test_seed_cases_cover_the_demo_agent() -> None:
    cases = load_cases()
    assert {c.name for c in cases} >= SEED_KINDS
    assert all(c.critical for c in cases if c.name in SEED_KINDS)


def test_make_eval_passes_on_the_demo_agent(tmp_path: Path) -> None:
    done = run_make_eval(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in CASE_NAMES:
        assert any(
            line.split()[:1] == [name] and " PASS " in line for line in done.stdout.splitlines()
        ), done.stdout
    assert "eval gate PASSED: pass rate 100%" in done.stdout
    suite = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (
        str(len(CASE_NAMES)),
        "0",
        "0",
    )
    assert "eval gate PASSED" in (tmp_path / "report.md").read_text()


def test_instructions_that_stop_the_tool_call_fail_the_gate(tmp_path: Path) -> None:
    done = run_make_eval(
        tmp_path, AGENT_INSTRUCTIONS="You are a concise assistant. Do not use tools."
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    # The case, the expected trajectory and the actual one, in one line.
    line = next(x for x in out.splitlines() if x.startswith("FAIL calculator_trajectory:"))
    assert "tool calls (exact): expected [calculate(expression=/" in line
    assert '-> "84"], got []' in line
    assert "eval gate FAILED: critical case approval_pause failed" in out
    assert "critical case calculator_trajectory failed" in out
    failures = {
        case.get("name"): case.find("failure")
        for case in ElementTree.parse(tmp_path / "junit.xml").getroot()
    }
    failure = failures["calculator_trajectory"]
    assert failure is not None and "got []" in (failure.text or "")
    assert failures["memory_across_turns"] is None  # it needs no tool: still passes
    report = (tmp_path / "report.md").read_text()
    assert "**calculator_trajectory** (FAIL)" in report


@pytest.fixture
def keyed_server(settings_env: dict[str, str]) -> Iterator[LiveServer]:
    server = LiveServer(
        dict(os.environ) | settings_env | {"AUTH_MODE": "api_key", "AUTH_API_KEYS": API_KEYS}
    )
    yield server
    server.stop()


def test_eval_url_with_a_key_runs_every_case_but_the_demo_steered_one(
    keyed_server: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EVAL_API_KEY", ALICE_KEY)
    monkeypatch.delenv("EVAL_JUDGE_MODEL", raising=False)
    code = main(["--url", keyed_server.url, "--k", "2", "--junit", str(tmp_path / "j.xml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "large_result_link" in out and "SKIP" in out
    assert "calculator_trajectory  yes   PASS    2/2" in out  # k runs, and their spread
    monkeypatch.setenv("EVAL_API_KEY", "wrong-key-0123456789abcdef")
    code = main(["--url", keyed_server.url, "--case", "calculator_trajectory"])
    out = capsys.readouterr().out
    assert code == 1
    assert "status: expected completed, got HTTP 401" in out


def test_a_rubric_is_graded_only_with_a_judge(
    keyed_server: LiveServer,
    model: DemoModelServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("EVAL_API_KEY", ALICE_KEY)
    monkeypatch.setenv("EVAL_JUDGE_MODEL", "demo-model")
    monkeypatch.setenv("EVAL_JUDGE_BASE_URL", model.base_url)
    args = ["--url", keyed_server.url, "--case", "calculator_trajectory"]
    code = main([*args, "--junit", str(tmp_path / "j.xml"), "--report", str(tmp_path / "r.md")])
    out = capsys.readouterr().out
    # The demo model echoes instead of answering a verdict: the rubric fails, saying so.
    assert code == 1
    assert "rubric: the judge demo-model gave no verdict" in out
    judged = [r for r in model.requests if "Rubric:" in json.dumps(r)]
    assert len(judged) == 1 and "84" in json.dumps(judged[0])


def test_auth_headers() -> None:
    assert auth_headers({"EVAL_ID_TOKEN": "tok"}) == {"Authorization": "Bearer tok"}
    assert auth_headers({"EVAL_API_KEY": "k"}) == {"X-API-Key": "k"}
    both = auth_headers({"EVAL_API_KEY": "k", "EVAL_ID_TOKEN": "t"})
    assert both == {"X-API-Key": "k", "Authorization": "Bearer t"}


def calls(*pairs: tuple[str, dict[str, str]]) -> list[Call]:
    return [Call(name, args, "ok") for name, args in pairs]


def test_trajectory_modes() -> None:
    actual = calls(("a", {"x": "1"}), ("b", {}), ("c", {"y": "hello world"}))
    a, c = {"name": "a", "arguments": {"x": "1"}}, {"name": "c"}
    assert trajectory_matches("exact", [a, {"name": "b"}, c], actual)
    assert not trajectory_matches("exact", [a, c], actual)
    assert trajectory_matches("in_order", [a, c], actual)
    assert not trajectory_matches("in_order", [c, a], actual)
    assert trajectory_matches("any_order", [c, a], actual)
    assert not trajectory_matches("any_order", [c, c], actual)
    assert trajectory_matches("exact", [], [])
    with_args = {"name": "c", "arguments": {"y": {"contains": "world"}}}
    assert trajectory_matches("in_order", [with_args], actual)
    assert not trajectory_matches("in_order", [{"name": "c", "arguments": {"y": "hello"}}], actual)
    assert trajectory_matches(
        "in_order", [{"name": "c", "arguments": {"y": {"regex": "^h"}}}], actual
    )
    assert not trajectory_matches("in_order", [{"name": "a", "arguments": {"z": "1"}}], actual)
    assert not trajectory_matches("in_order", [{"name": "a", "output": "no"}], actual)


def test_reply_status_schema_and_ceilings() -> None:
    seen = Observed(
        200,
        {
            "status": "completed",
            "reply": '{"answer": 84}',
            "usage": {"total_tokens": 900, "cost_usd": 0.2},
        },
        latency_ms=1500,
    )
    expect = {
        "reply": {
            "contains": ["84"],
            "regex": "answer",
            "json_schema": {
                "type": "object",
                "required": ["answer"],
                "properties": {"answer": {"type": "string"}},
            },
        },
        "max_tokens": 800,
        "max_cost_usd": 0.1,
        "max_latency_ms": 1000,
    }
    failures = check_turn(expect, seen)
    assert [f.split(":")[0] for f in failures] == ["reply", "latency", "tokens", "cost"]
    assert "84 is not of type 'string'" in failures[0]
    assert check_turn({"status": "approval_required"}, seen) == [
        "status: expected approval_required, got completed"
    ]
    refused = Observed(409, {"error": {"code": "session_busy", "message": "busy"}}, 5)
    assert check_turn({}, refused) == [
        "status: expected completed, got HTTP 409 session_busy (busy)"
    ]


def test_a_misspelt_check_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"turns": [{"message": "hi", "expect": {"tool": []}}]}))
    with pytest.raises(
        CaseError, match=r"typo.json: turns/0/expect: Additional properties .*'tool'"
    ):
        load_case(path)
    path.write_text(json.dumps({"k": 2, "min_passes": 3, "turns": [{"message": "hi"}]}))
    with pytest.raises(CaseError, match="min_passes 3 is more than k 2"):
        load_case(path)


def test_the_runner_is_a_client_of_the_api_only() -> None:
    """It tests what users call: nothing of the service is imported, only the HTTP API."""
    import ast

    for path in (REPO_ROOT / "evals").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "agent" or n.startswith("agent.") for n in names), path
