"""Every Firestore collection group the service writes expires: deploy/setup.sh sets one TTL
policy on the TTL field per collection group the store's schema exports, the static reader
the scripts use (deploy/collection_groups.py) agrees with that module, and a scan of the
service code for ``.collection()`` and ``.collection_group()`` calls finds no group without
a policy.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from tests.support.deploy_scenarios import DEPLOY, REPO, Run, Scenario, calls_of, flags_of

pytestmark = pytest.mark.usefixtures("repo_on_path")


def recorded_ttl_groups(run: Run) -> list[str]:
    from agent.store.schema import TTL_FIELD

    updates = calls_of(run, "firestore", "fields", "ttls", "update")
    for argv in updates:
        assert argv[4] == TTL_FIELD and "--enable-ttl" in argv, argv
    return [flags_of(argv)["collection-group"] for argv in updates]


def test_one_ttl_policy_per_collection_group_the_code_exports(
    scenario: Scenario,
) -> None:
    from agent.store import schema

    assert schema.TTL_FIELD == "expire_at"
    groups = recorded_ttl_groups(scenario.setup)
    assert len(groups) == len(set(groups)), "one policy per collection group"
    assert set(groups) == set(schema.COLLECTION_GROUPS)


def test_static_reader_agrees_with_the_module() -> None:
    from agent.store import schema

    out = subprocess.run(
        [sys.executable, str(DEPLOY / "collection_groups.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    assert out == list(dict.fromkeys(schema.COLLECTION_GROUPS))
    field = subprocess.run(
        [sys.executable, str(DEPLOY / "collection_groups.py"), "--ttl-field"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.strip()
    assert field == schema.TTL_FIELD


def written_collection_groups() -> dict[str, str]:
    """Every literal collection name the service code passes to .collection()/.collection_group().

    Returns {group: "file:line"}. A name that cannot be resolved to a string statically is
    reported as a failure: its TTL policy could not be checked.
    """
    sys.path.insert(0, str(DEPLOY))
    try:
        reader = importlib.import_module("collection_groups")
    finally:
        sys.path.remove(str(DEPLOY))
    files = sorted((REPO / "agent").rglob("*.py")) + sorted(REPO.glob("*.py"))
    found: dict[str, str] = {}
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("collection", "collection_group")
                and node.args
            ):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            arg = node.args[0]
            try:
                value = reader.resolve_expression(module, arg)
            except reader.Unresolvable as error:
                pytest.fail(
                    f"{where}: collection name {ast.unparse(arg)} is not a constant ({error})"
                )
            assert isinstance(value, str), where
            found[value] = where
    return found


def test_every_collection_group_the_code_writes_has_a_ttl_policy(
    scenario: Scenario,
) -> None:
    written = written_collection_groups()
    assert written, "the scan found no .collection() call; it is not looking at the code"
    recorded = set(recorded_ttl_groups(scenario.setup))
    missing = {group: where for group, where in written.items() if group not in recorded}
    assert not missing, f"collection groups written without a TTL policy: {missing}"
