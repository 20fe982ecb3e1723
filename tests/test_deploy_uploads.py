"""What each upload carries, as gcloud itself lists it from the ignore files: the function's
upload (.gcloudignore) holds the service and nothing else; the pipeline's
(deploy/build.gcloudignore) keeps the tests and the tooling the build runs, but no local
state. Skipped where the gcloud CLI is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import DEPLOY, REPO
from tests.support.gcloud_replay import REAL_GCLOUD

pytestmark = pytest.mark.usefixtures("repo_on_path")


def upload_list(ignore_file: Path, tmp_path: Path) -> set[str]:
    if REAL_GCLOUD is None:
        pytest.skip("gcloud CLI not installed: cannot evaluate .gcloudignore")
    tree = tmp_path / "src"
    for rel in [
        "main.py",
        "requirements.txt",
        "agent/__init__.py",
        "agent/base/settings.py",
        "agent_examples/demo/agent.py",
        "my_agent/agent.py",  # a user's own package, named by AGENT_FACTORY
        "tests/test_deploy.py",
        "tests/fakes/gcloud",
        ".venv/bin/python",
        "bench/run.py",
        "bench/results/r.json",
        ".local/data.json",
        "deploy/setup.sh",
        "cloudbuild.yaml",
        "Makefile",
        "README.md",
        ".git/HEAD",
        "agent/__pycache__/x.cpython-312.pyc",
        "requirements-dev.txt",
        "requirements-local.txt",
        "requirements.in",
        "requirements-dev.in",
        "local/run.py",
        "evals/run.py",
        "evals/cases/approval_pause.json",
        "pyproject.toml",
        "openapi.yaml",
    ]:
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    shutil.copy(ignore_file, tree / ".gcloudignore")
    result = subprocess.run(
        [REAL_GCLOUD, "meta", "list-files-for-upload", str(tree)],
        capture_output=True,
        text=True,
        env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "cfg")},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_function_upload_holds_the_service_and_its_agent_and_nothing_else(
    tmp_path: Path,
) -> None:
    """The service, the demo agent, and a user's package beside them (AGENT_FACTORY)."""
    files = upload_list(REPO / ".gcloudignore", tmp_path)
    assert files == {
        "main.py",
        "requirements.txt",
        "agent/__init__.py",
        "agent/base/settings.py",
        "agent_examples/demo/agent.py",
        "my_agent/agent.py",
    }


def test_pipeline_upload_keeps_tests_and_tooling_but_not_local_state(
    tmp_path: Path,
) -> None:
    files = upload_list(DEPLOY / "build.gcloudignore", tmp_path)
    for needed in [
        "tests/test_deploy.py",
        "tests/fakes/gcloud",
        "deploy/setup.sh",
        "cloudbuild.yaml",
        "Makefile",
        "main.py",
        "evals/run.py",  # the pipeline's gate runs the cases of the same upload
        "evals/cases/approval_pause.json",
    ]:
        assert needed in files
    for local in [
        ".venv/bin/python",
        "bench/results/r.json",
        ".local/data.json",
        ".git/HEAD",
    ]:
        assert local not in files
