"""``AGENT_FACTORY`` (issue 23): the service runs the agent a user's own package builds,
the demo agent is an example loaded the same way, and a factory that fails stops start-up
with one line that names it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agents import FunctionTool

from agent.base.settings import Settings
from agent.runtime.factory import DEFAULT_FACTORY, FactoryError, build_agent, reachable
from agent.runtime.model import build_model
from tests.support.constants import REPO_ROOT

SETTINGS = Settings.from_env(
    {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "AGENT_MODEL": "m", "AUTH_MODE": "none"}
)


def test_unset_it_is_the_demo_agent_loaded_like_any_other() -> None:
    assert SETTINGS.agent_factory is None
    agent = build_agent(SETTINGS, build_model(SETTINGS))
    assert DEFAULT_FACTORY == "agent_examples.demo.agent:build_agent"
    assert agent.name == "assistant"
    assert [tool.name for tool in agent.tools] == ["calculate", "send_message"]  # type: ignore[union-attr]


def test_nothing_in_the_service_imports_the_examples() -> None:
    importers = []
    for path in [*(REPO_ROOT / "agent").rglob("*.py"), REPO_ROOT / "main.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] == "agent_examples" for name in names):
                importers.append(str(path.relative_to(REPO_ROOT)))
    assert importers == []


def test_an_agent_object_at_the_path_works_too() -> None:
    settings = Settings.from_env(
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "AGENT_FACTORY": "tests.user_agent.app:AGENT"}
    )
    model = build_model(settings)
    agent = build_agent(settings, model)
    assert agent.name == "triage"
    # Fitted, every agent reachable by handoff: the service's model, its tool bounds.
    fitted = list(reachable(agent))
    assert [a.name for a in fitted] == ["triage", "outbox"]
    assert all(a.model is model for a in fitted)
    tools = [t for a in fitted for t in a.tools if isinstance(t, FunctionTool)]
    assert tools and all(t.timeout_seconds == settings.tool_timeout_seconds for t in tools)
    again = build_agent(settings, model)  # a second service fits the same object again
    assert [t.on_invoke_tool for t in again.tools] == [t.on_invoke_tool for t in agent.tools]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("factory", "named"),
    [
        ("no_such_package.agents:build", "ModuleNotFoundError: No module named 'no_such_package'"),
        ("tests.user_agent.app:missing", "AttributeError:"),
        ("tests.user_agent.app:broken_factory", "RuntimeError: the factory could not reach"),
        ("tests.user_agent.app:not_an_agent", "returned a str, not an agents.Agent"),
        ("not a path", "is not package.module:name"),
    ],
)
def test_a_failing_factory_is_one_line_naming_it(factory: str, named: str) -> None:
    settings = Settings.from_env(
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "AGENT_FACTORY": factory}
    )
    with pytest.raises(FactoryError) as refused:
        build_agent(settings, build_model(settings))
    message = str(refused.value)
    assert factory in message and named in message and "\n" not in message, message


def test_the_server_refuses_to_start_with_one_clear_line(tmp_path: Path) -> None:
    """The real entry point, as the platform starts it: non-zero exit, no traceback, and
    the one line naming the factory and what it raised."""
    env = dict(os.environ) | {
        "AGENT_FACTORY": "tests.user_agent.app:broken_factory",
        "HISTORY_BACKEND": "sqlite",
        "SQLITE_PATH": str(tmp_path / "history.sqlite3"),
        "AUTH_MODE": "none",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "functions_framework", "--target=agent_http", "--port=0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    failed = [json.loads(line) for line in output.splitlines() if "AGENT_FACTORY" in line]
    assert len(failed) == 1, output
    assert failed[0]["severity"] == "CRITICAL"
    assert (
        "AGENT_FACTORY=tests.user_agent.app:broken_factory failed: RuntimeError:"
        in (failed[0]["message"])
    )
    assert not (tmp_path / "history.sqlite3").exists()  # nothing was opened for it


def test_approval_required_tools_reach_an_agent_behind_a_handoff() -> None:
    settings = Settings.from_env(
        {
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "AGENT_FACTORY": "tests.user_agent.app:build_agent",
            "APPROVAL_REQUIRED_TOOLS": "whoami",
        }
    )
    agent = build_agent(settings, build_model(settings))
    gates = {
        t.name: t.needs_approval
        for a in reachable(agent)
        for t in a.tools
        if isinstance(t, FunctionTool)
    }
    assert gates == {"whoami": True, "send_message": True}


def test_a_sync_tool_is_named_in_a_warning_it_cannot_be_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from agents import function_tool

    from agent.runtime.tools import fit_tools

    def blocking(x: int) -> int:
        """Blocks its thread.

        Args:
            x: a number.
        """
        return x

    with caplog.at_level("WARNING"):
        (tool,) = fit_tools([function_tool(blocking)], SETTINGS)
    assert isinstance(tool, FunctionTool) and tool.timeout_seconds is None
    assert "'blocking' is not async: TOOL_TIMEOUT_SECONDS cannot bound it" in caplog.text
