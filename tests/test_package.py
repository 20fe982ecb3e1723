"""The service is an installable package (issue 25 item 5): pyproject.toml declares its
build, its dependencies (requirements.in, the one source the hashed lock is compiled
from) and its packages (``agent`` with its static files, and ``agent_examples``, whose demo
agent is the default ``AGENT_FACTORY``; not local/, bench/, deploy/, tests/). The wheel
is built offline from a copy of the tree, installed into an empty venv with ``--no-deps
--no-index``, and imported and served from there."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.support.constants import REPO_ROOT
from tests.test_locks import canonical, direct_pins

_CACHES = shutil.ignore_patterns(
    ".git", ".venv", ".local", "__pycache__", "*.pyc", ".*_cache", "build", "dist", "*.egg-info"
)


def skipped(directory: str, names: list[str]) -> set[str]:
    """What the copy of the tree leaves out: caches, venvs, build output, bench results."""
    left_out = set(_CACHES(directory, names))
    if Path(directory).name == "bench":
        left_out.add("results")
    return left_out


PIP = [sys.executable, "-m", "pip"]
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **OFFLINE, **(env or {})},
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the tree (a build writes build/ and
    *.egg-info beside the sources), offline: setuptools comes from the dev lock."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=skipped)
    out = root / "dist"
    offline_build = ["-q", "--no-deps", "--no-build-isolation", "--no-index"]
    run([*PIP, "wheel", *offline_build, "--wheel-dir", str(out), str(source)], cwd=root)
    (built,) = out.glob("agent_cloud_function-*.whl")
    return built


def test_the_wheel_holds_the_agent_package_and_the_examples_with_its_static_files(
    wheel: Path,
) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    dist_info = next(t for t in tops if t.endswith(".dist-info"))
    assert tops == {"agent", "agent_examples", dist_info}
    sources = {
        p.relative_to(REPO_ROOT).as_posix()
        for package in ("agent", "agent_examples")
        for p in (REPO_ROOT / package).rglob("*.py")
    }
    assert sources <= set(names)
    for static in ("playground.html", "playground.css", "playground.js"):
        assert f"agent/api/static/{static}" in names
    assert "agent/py.typed" in names


def test_its_dependencies_are_requirements_in(wheel: Path) -> None:
    """One source of truth: the wheel requires exactly what requirements.in pins, which
    is what the lock (and so the deploy and the tests) installs."""
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(meta).decode()
    lines = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    required = dict(line.split("==") for line in lines)
    assert {canonical(name): v for name, v in required.items()} == direct_pins(
        REPO_ROOT / "requirements.in"
    )


def test_the_wheel_installs_into_an_empty_venv_and_serves(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
    )
    # Offline, the dependencies come from the test's own environment, behind the
    # venv's: the wheel's agent package is the one imported, not the source tree.
    site = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
    )
    Path(site.strip(), "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    script = """
import agent, json, sys
from agent.api.app import create_app
from agent.base.settings import Settings
from agent.service import build_service

settings = Settings.from_env({
    "HISTORY_BACKEND": "sqlite", "SQLITE_PATH": "history.sqlite3", "AUTH_MODE": "none",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "AGENT_MODEL": "m",
})
service = build_service(settings)
client = create_app(service).test_client()
health, page = client.get("/healthz"), client.get("/")
service.close()
print(json.dumps([agent.__file__, health.status_code, page.status_code, len(page.data)]))
"""
    out = run([str(python), "-I", "-c", script], cwd=tmp_path)
    location, health, page, size = json.loads(out.strip().splitlines()[-1])
    assert Path(location).is_relative_to(venv), location
    assert (health, page) == (200, 200) and size > 10_000  # the page with its script
