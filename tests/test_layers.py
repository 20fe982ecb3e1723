"""The packages of ``agent`` import in one direction only, read from the source (AST).

    api -> service -> {auth, turn, runs} -> {store, results, runtime} -> base

``runs`` (background runs) sits beside ``turn`` and may import it: a run executes its
steps through ``turn``, and ``turn`` does not know runs exist.

A module may import its own package and packages of a lower layer; never a higher
layer, never a sibling of its own layer, and never a private (``_``) name of another
package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "agent"
LAYER = {
    "base": 0,
    "store": 1,
    "results": 1,
    "runtime": 1,
    "turn": 2,
    "runs": 2,
    "auth": 2,
    "service": 3,
    "api": 4,
}
BESIDE = frozenset({("runs", "turn")})
"""(importer, imported) pairs of one layer that may import each other in that direction."""


def package_of(module: str) -> str | None:
    """``agent.store.history`` -> ``store``; ``agent`` itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "agent" else None


def module_name(path: Path) -> str:
    relative = path.relative_to(AGENT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own if is_package else own[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def violations(path: Path) -> list[str]:
    mine = package_of(module_name(path))
    problems = []
    for module, names, line in imports_of(path):
        if package_of(module) is None and module == "agent" and names:
            # ``from agent import store`` names a package: judge each.
            targets = [(f"agent.{name}", []) for name in names]
        else:
            targets = [(module, names)]
        for target, imported in targets:
            theirs = package_of(target)
            if theirs is None or theirs == mine:
                continue
            where = f"{path.relative_to(AGENT.parent)}:{line} imports {target}"
            if mine is None:
                problems.append(f"{where}: agent/__init__.py imports nothing")
            elif theirs not in LAYER:
                problems.append(f"{where}: unknown package {theirs!r}")
            elif LAYER[theirs] >= LAYER[mine] and (mine, theirs) not in BESIDE:
                problems.append(f"{where}: {mine} may not import {theirs}")
            private = [n for n in imported if n.startswith("_")]
            if private or any(p.startswith("_") for p in target.split(".")[2:]):
                problems.append(f"{where}: private name {private or target}")
    return problems


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in AGENT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in AGENT.glob("*.py") if p.name != "__init__.py"}
    assert packages | modules == set(LAYER)


def test_imports_point_down_the_layers() -> None:
    problems = [problem for path in sorted(AGENT.rglob("*.py")) for problem in violations(path)]
    assert problems == []


@pytest.mark.parametrize(
    ("mine", "source", "expected"),
    [
        ("store/x.py", "from agent.turn.runner import TurnRunner\n", "store may not import turn"),
        ("store/x.py", "from agent.results import policy\n", "store may not import results"),
        ("base/x.py", "import agent.store.history\n", "base may not import store"),
        ("turn/x.py", "from agent.auth.modes import NoAuth\n", "turn may not import auth"),
        ("turn/x.py", "from agent.store.history import _is_live\n", "private name"),
        ("turn/x.py", "from agent import api\n", "turn may not import api"),
        ("store/x.py", "from ..runtime import tools\n", "store may not import runtime"),
        ("api/x.py", "from agent.store.history import HistoryStore\n", None),
        ("runs/x.py", "from agent.turn.runner import TurnRunner\n", None),
        ("turn/x.py", "from agent.runs.queue import Queue\n", "turn may not import runs"),
        ("runs/x.py", "from agent.auth.modes import NoAuth\n", "runs may not import auth"),
        ("store/x.py", "from .history import HistoryStore\n", None),
    ],
)
def test_the_check_catches_what_it_should(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mine: str, source: str, expected: str | None
) -> None:
    fake = tmp_path / "agent"
    (fake / mine).parent.mkdir(parents=True)
    (fake / mine).write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["AGENT"]), "AGENT", fake)
    problems = violations(fake / mine)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems
