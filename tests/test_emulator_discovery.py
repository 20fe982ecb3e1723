"""Finding the Firestore emulator on machines laid out differently (``local/emulators.py``):
the variable first, then gcloud's own SDK root, then the usual install places; a Java
check; one line saying what is missing and how to install it, never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local import emulators
from tests.support.constants import REPO_ROOT


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def sdk(root: Path, version: str = "528.0.0") -> Path:
    """A Cloud SDK tree with the emulator component; its jar."""
    jar = root / "platform" / "cloud-firestore-emulator" / "cloud-firestore-emulator.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"PK")
    (root / "VERSION").write_text(version + "\n")
    return jar


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A machine with nothing installed: empty PATH, no usual places, no variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("FIRESTORE_EMULATOR_JAR", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(emulators, "_USUAL_SDK_ROOTS", (str(tmp_path / "usual-sdk"),))
    emulators.find_firestore_emulator.cache_clear()
    yield tmp_path
    emulators.find_firestore_emulator.cache_clear()


def java(bin_dir: Path, version: str) -> None:
    executable(bin_dir / "java", f"echo 'openjdk version \"{version}\" 2025-04-15' >&2\n")


def test_nothing_installed_says_how_to_install_in_one_line(machine: Path) -> None:
    reason = emulators.firestore_emulator_missing()
    assert reason is not None and "\n" not in reason
    assert "not installed" in reason and "gcloud components install" in reason
    with pytest.raises(RuntimeError, match="not installed"):
        emulators.FirestoreEmulator().start()


def test_the_variable_comes_first_and_a_wrong_one_is_named(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java(machine / "bin", "17.0.15")
    sdk(machine / "usual-sdk")  # would be found, but the variable is authoritative
    monkeypatch.setenv("FIRESTORE_EMULATOR_JAR", "/nonexistent")
    assert "FIRESTORE_EMULATOR_JAR=/nonexistent" in (emulators.firestore_emulator_missing() or "")
    emulators.find_firestore_emulator.cache_clear()
    own = sdk(machine / "elsewhere")
    monkeypatch.setenv("FIRESTORE_EMULATOR_JAR", str(own))
    found = emulators.find_firestore_emulator().install
    assert found is not None and found.jar == own and found.java_version == 17


def test_gclouds_sdk_root_is_asked(machine: Path) -> None:
    """A Homebrew or tarball SDK anywhere: gcloud on PATH knows its own root."""
    root = machine / "Caskroom" / "google-cloud-sdk"
    jar = sdk(root)
    executable(machine / "bin" / "gcloud", f"echo {root}\n")
    java(machine / "bin", "21.0.2")
    found = emulators.find_firestore_emulator().install
    assert found is not None and found.jar == jar


def test_the_usual_places_are_searched(machine: Path) -> None:
    jar = sdk(machine / "usual-sdk")
    java(machine / "bin", "17.0.1")
    found = emulators.find_firestore_emulator().install
    assert found is not None and found.jar == jar


def test_java_missing_or_too_old_is_said(machine: Path) -> None:
    sdk(machine / "usual-sdk", version="530.0.0")  # SDK 529+ needs Java 21
    assert "Java not found" in (emulators.firestore_emulator_missing() or "")
    emulators.find_firestore_emulator.cache_clear()
    java(machine / "bin", "17.0.15")
    reason = emulators.firestore_emulator_missing() or ""
    assert "Java 17" in reason and "needs Java 21+" in reason
    emulators.find_firestore_emulator.cache_clear()
    java(machine / "bin", "1.8.0_392")
    assert "Java 8" in (emulators.firestore_emulator_missing() or "")


def test_an_emulator_that_exits_at_once_is_reported_not_waited_for(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jar = sdk(machine / "usual-sdk")
    executable(
        machine / "bin" / "java",
        """case "$1" in -version) echo 'openjdk version "17.0.1"' >&2;; *) exit 3;; esac\n""",
    )
    monkeypatch.setenv("FIRESTORE_EMULATOR_JAR", str(jar))
    with pytest.raises(RuntimeError, match="did not start: it exited with status 3"):
        emulators.FirestoreEmulator().start(timeout=20)


@pytest.mark.parametrize(
    ("output", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_392"', 8), ("", None)],
)
def test_java_version_parsing(tmp_path: Path, output: str, major: int | None) -> None:
    fake = executable(tmp_path / "java", f"echo '{output}' >&2\n")
    assert emulators.java_major_version(str(fake)) == major


PROBE = "from local.emulators import firestore_emulator_missing as m; print(m())"


def test_the_real_machine_answers_in_one_line() -> None:
    """Here, as the tests run: found, or one line of reason (never an exception)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(result.stdout.strip().splitlines()) == 1 and result.stderr == ""
