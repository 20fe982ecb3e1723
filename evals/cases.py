"""Eval cases as data: one JSON file per case under ``evals/cases/``, checked against
``evals/case.schema.json`` when loaded, so that a misspelt check is an error that names
the file, not a check that silently never runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
SCHEMA = json.loads((HERE / "case.schema.json").read_text(encoding="utf-8"))


class CaseError(ValueError):
    """A case file that cannot be run, with the file and the reason."""


@dataclass(frozen=True)
class Turn:
    """A user message, or a decision on every pending tool call of the last pause."""

    message: str | None
    decide: dict[str, Any] | None
    expect: dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    critical: bool
    k: int
    min_passes: int
    turns: tuple[Turn, ...]
    demo_controls: dict[str, Any] | None = None
    source: Path = field(default=CASES_DIR)

    @property
    def needs_demo_model(self) -> bool:
        """Cases that steer the demo model (a 400 kB reply, say) run only against it."""
        return self.demo_controls is not None


def load_case(path: Path, default_k: int = 1) -> Case:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CaseError(f"{path}: not readable JSON: {exc}") from None
    problems = sorted(
        jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.path)
    )
    if problems:
        where = "/".join(str(p) for p in problems[0].absolute_path) or "(top)"
        raise CaseError(f"{path}: {where}: {problems[0].message}")
    k = int(data.get("k", default_k))
    min_passes = int(data.get("min_passes", k))
    if min_passes > k:
        raise CaseError(f"{path}: min_passes {min_passes} is more than k {k}")
    turns = tuple(
        Turn(message=t.get("message"), decide=t.get("decide"), expect=t.get("expect", {}))
        for t in data["turns"]
    )
    return Case(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        critical=bool(data.get("critical", False)),
        k=k,
        min_passes=min_passes,
        turns=turns,
        demo_controls=data.get("demo_controls"),
        source=path,
    )


def load_cases(directory: Path = CASES_DIR, default_k: int = 1) -> list[Case]:
    """Every ``*.json`` case in ``directory``, by file name; names must be unique."""
    cases = [load_case(path, default_k) for path in sorted(directory.glob("*.json"))]
    if not cases:
        raise CaseError(f"{directory}: no *.json cases")
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            raise CaseError(f"{case.source}: case name {case.name!r} also in {seen[case.name]}")
        seen[case.name] = case.source
    return cases
