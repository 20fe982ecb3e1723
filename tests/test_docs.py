"""The documents match the code: every setting is documented with its real default, and
every relative link in the README and the docs points at a file that exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from agent.base.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "configuration.md"
LINKED_DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").glob("*.md")]
)
SETTINGS_HEADER = "| Variable | Default | Meaning |"
SEE_BELOW = "`(see below)`"
# Defaults too long for a table cell: the table says (see below) and the text must quote them.
SPELLED_OUT_BELOW = frozenset({"agent_instructions"})
# Defaults that depend on where the process runs: the cell states both, and
# test_conditional_defaults_are_what_the_code_does checks each.
CONDITIONAL = {"playground_enabled": "`true`; `false` where `K_SERVICE` is set"}

_ROW = re.compile(r"^\|\s*`(?P<name>[A-Z0-9_]+)`\s*\|\s*(?P<default>[^|]*?)\s*\|[^|]*\|$")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)[^)]*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(?P<target>\S+)", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def render(value: object) -> str:
    """A Python default as it would be written in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def default_of(field: dataclasses.Field[object]) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise AssertionError(f"Settings.{field.name} has no default: document what it needs")


def documented_defaults(text: str) -> dict[str, str]:
    """Variable -> the Default cell as written, from the one table under SETTINGS_HEADER."""
    assert text.count(SETTINGS_HEADER) == 1, f"want exactly one table headed {SETTINGS_HEADER}"
    table = text.split(SETTINGS_HEADER, 1)[1].strip().splitlines()[1:]  # skip the rule
    rows: dict[str, str] = {}
    for line in table:
        if not line.startswith("|"):
            break
        match = _ROW.match(line.strip())
        assert match, f"not a `VARIABLE` | `default` | meaning row (a stray '|'?): {line}"
        assert match["name"] not in rows, f"{match['name']} is documented twice"
        rows[match["name"]] = match["default"]
    return rows


def test_every_setting_is_documented_with_its_default() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = documented_defaults(text)
    problems: list[str] = []
    for field in dataclasses.fields(Settings):
        name, default = field.name.upper(), render(default_of(field))
        cell = documented.pop(name, None)
        if cell is None:
            problems.append(f"{name} is missing (default `{default}`)")
        elif field.name in CONDITIONAL:
            if cell != CONDITIONAL[field.name] or not cell.startswith(f"`{default}`"):
                problems.append(f"{name}: documented {cell}, want {CONDITIONAL[field.name]}")
        elif field.name in SPELLED_OUT_BELOW and cell == SEE_BELOW:
            if default not in text:
                problems.append(f"{name}: the text does not quote its default {default!r}")
        elif cell != f"`{default}`":
            problems.append(f"{name}: documented {cell}, but the default is `{default}`")
    problems += [f"{name} is documented but is not a field of Settings" for name in documented]
    assert not problems, f"{CONFIGURATION.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_conditional_defaults_are_what_the_code_does() -> None:
    # On the platform, AUTH_MODE=iam needs its audience (issue 10): give it one.
    platform = {"K_SERVICE": "agent", "AUTH_AUDIENCE": "https://agent.example"}
    here, deployed = Settings.from_env({}), Settings.from_env(platform)
    assert (here.playground_enabled, deployed.playground_enabled) == (True, False)
    opted_in = Settings.from_env(platform | {"PLAYGROUND_ENABLED": "true"})
    assert opted_in.playground_enabled is True


def relative_link_targets(text: str) -> list[str]:
    """Targets of inline and reference links outside code, without their #anchor."""
    prose = _CODE_SPAN.sub("", _FENCE.sub("", text))
    targets = [m["target"] for m in (*_LINK.finditer(prose), *_REFERENCE.finditer(prose))]
    return [
        target.split("#", 1)[0].strip("<>")
        for target in targets
        if not _EXTERNAL.match(target) and not target.startswith("#")
    ]


@pytest.mark.parametrize("document", LINKED_DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(document: Path) -> None:
    targets = relative_link_targets(document.read_text(encoding="utf-8"))
    broken = [t for t in targets if not (document.parent / t).exists()]
    assert not broken, f"{document.relative_to(ROOT)} links to missing files: {broken}"


def test_the_checks_can_fail() -> None:
    """The parsers find what they should, so an empty result above means a clean document."""
    sample = "| Variable | Default | Meaning |\n| --- | --- | --- |\n| `A_B` | `5.0` | x |\n"
    assert documented_defaults(sample) == {"A_B": "`5.0`"}
    links = "[a](docs/x.md#top) [b](https://e.org) [c](#here) `[d](no.md)`\n[e]: ../f.md\n"
    assert relative_link_targets(links) == ["docs/x.md", "../f.md"]
    assert [render(v) for v in (None, False, "", 3600, 5.0, "(default)")] == [
        "unset",
        "false",
        '""',
        "3600",
        "5.0",
        "(default)",
    ]
