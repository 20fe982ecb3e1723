"""Dependencies are locked with hashes (issue 10 item 7): each requirements*.in file (the
direct dependencies, pinned) has a lock, requirements*.txt, compiled from it by a standard
tool (uv pip compile --generate-hashes, `make lock`), holding every transitive dependency
pinned with its hashes; `make test` installs the locks with --require-hashes, and Cloud
Functions installs requirements.txt, where pip's hash-checking mode then applies. A lock
that disagrees with its requirements fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.constants import REPO_ROOT

PAIRS = [
    ("requirements.in", "requirements.txt"),
    ("requirements-local.in", "requirements-local.txt"),
    ("requirements-dev.in", "requirements-dev.txt"),
]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_pins(path: Path) -> dict[str, str]:
    """{name: version} of an .in file and the files it includes with -r."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins |= direct_pins(path.parent / line[3:].strip())
            continue
        match = _PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {raw!r}"
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def locked(text: str) -> dict[str, tuple[str, int]]:
    """{name: (version, number of hashes)} of a lock."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in text.splitlines():
        if match := _PIN.match(line):
            current = canonical(match.group(1))
            entries[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = entries[current]
            entries[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"unpinned or unknown lock line: {line!r}")
    return entries


def disagreements(requirements: dict[str, str], lock_text: str) -> list[str]:
    entries = locked(lock_text)
    problems = [
        f"{name}=={version} is locked as {entries[name][0] if name in entries else 'absent'}"
        for name, version in requirements.items()
        if entries.get(name, ("",))[0] != version
    ]
    problems += [f"{name} has no hash" for name, (_, hashes) in entries.items() if hashes == 0]
    return problems


@pytest.mark.parametrize(("source", "lock"), PAIRS)
def test_the_lock_agrees_with_its_requirements(source: str, lock: str) -> None:
    text = (REPO_ROOT / lock).read_text()
    assert "uv via the following command" in text and "make lock" in text, "made by make lock"
    assert disagreements(direct_pins(REPO_ROOT / source), text) == []


def test_a_disagreement_is_caught() -> None:
    text = (REPO_ROOT / "requirements.txt").read_text()
    pins = direct_pins(REPO_ROOT / "requirements.in")
    bumped = pins | {"flask": "0.0.1"}
    assert any("flask==0.0.1" in p for p in disagreements(bumped, text))
    assert any("absent" in p for p in disagreements(pins | {"left-pad": "1.0"}, text))
    unhashed = re.sub(r"(flask==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", text)
    assert "flask has no hash" in disagreements(pins, unhashed)


def test_the_locks_agree_with_each_other() -> None:
    """The runtime set is the same in all three (what is tested is what is deployed)."""
    runtime = locked((REPO_ROOT / "requirements.txt").read_text())
    for lock in ("requirements-local.txt", "requirements-dev.txt"):
        other = locked((REPO_ROOT / lock).read_text())
        for name, (version, _) in runtime.items():
            assert other.get(name, ("absent",))[0] == version, (lock, name)


def test_installs_require_hashes() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "pip install -q --require-hashes --no-deps" in makefile
    for _, lock in PAIRS:
        assert f"$(PIP_INSTALL) -r {lock}" in makefile
    assert "--upgrade pip" not in makefile  # an unlocked install of pip itself
    assert "--generate-hashes" in makefile
    # The function's upload carries the lock, not the .in files.
    ignore = (REPO_ROOT / ".gcloudignore").read_text().splitlines()
    assert "*.in" in ignore and "requirements.txt" not in ignore
