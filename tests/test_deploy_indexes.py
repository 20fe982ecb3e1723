"""Firestore's default single-field indexes on fields no query uses are switched off by
setup (issue 10 item 8): fewer index writes per turn, and no write hotspot on timestamps
that rise with every write. What is queried keeps its index, and a new query on an
exempted field fails here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.deploy_scenarios import REPO, Scenario, calls_of, flags_of

pytestmark = pytest.mark.usefixtures("repo_on_path")


def unindexed() -> set[tuple[str, str]]:
    out = subprocess.run(
        [sys.executable, "deploy/collection_groups.py", "--unindexed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {tuple(line.split()) for line in out.splitlines()}  # type: ignore[misc]


def test_every_unqueried_field_is_exempted_once(scenario: Scenario) -> None:
    exempted = {
        (flags_of(argv)["collection-group"], argv[4])
        for argv in calls_of(scenario.setup, "firestore", "indexes", "fields", "update")
    }
    assert exempted == unindexed()
    for argv in calls_of(scenario.setup, "firestore", "indexes", "fields", "update"):
        assert "--disable-indexes" in argv and "--async" in argv
    assert calls_of(scenario.second, "firestore", "indexes", "fields", "update") == []


def test_rising_timestamps_and_byte_fields_are_exempted_and_the_query_field_is_not() -> None:
    from agent.store import schema

    pairs = unindexed()
    for group in (schema.SESSIONS, schema.CHUNKS, schema.IDEMPOTENCY):
        assert (group, schema.TTL_FIELD) in pairs
    for field in (schema.UPDATED_AT, schema.CREATED_AT, schema.TAIL, schema.CLAIM_UNTIL):
        assert (schema.SESSIONS, field) in pairs
    assert (schema.CHUNKS, schema.DATA) in pairs
    assert (schema.IDEMPOTENCY, schema.SESSION_ID) not in pairs


def test_every_query_in_the_code_uses_an_indexed_field() -> None:
    from agent.store import schema

    pairs = unindexed()
    queried: set[str] = set()
    for path in (REPO / "agent").rglob("*.py"):
        text = path.read_text()
        for name in re.findall(r"(?:FieldFilter|\.sum)\(\s*([A-Z_]+)", text):
            queried.add(getattr(schema, name))
        assert ".order_by(" not in text, f"{path}: an ordered query needs its field indexed"
    assert queried == {schema.SESSION_ID, schema.HOLDING, schema.CALL_ID, schema.CHARGE_MICROS}
    # The field a query uses is never exempted in the group it is queried in.
    assert (schema.IDEMPOTENCY, schema.SESSION_ID) not in pairs
    # Runs are read by id only: their session_id (a copy) is exempted, nowhere else.
    assert {group for group, field in pairs if field == schema.SESSION_ID} == {schema.RUNS}
    # The spend's holds query and its sum keep their single-field indexes, and so does
    # the tool runs' query by call id.
    assert (schema.SPEND_TURNS, schema.HOLDING) not in pairs
    assert (schema.SPEND_TURNS, schema.CHARGE_MICROS) not in pairs
    assert (schema.TOOL_RUNS, schema.CALL_ID) not in pairs


def test_every_collection_group_has_a_document_type_and_its_exemptions(
    scenario: Scenario,
) -> None:
    """Issue 19 item 3: agent_spend and agent_tool_runs were written without exemptions.
    Every group of the schema gets its fields' exemptions from its document type."""
    from agent.store import schema

    exempted_groups = {
        flags_of(argv)["collection-group"]
        for argv in calls_of(scenario.setup, "firestore", "indexes", "fields", "update")
    }
    assert exempted_groups == set(schema.COLLECTION_GROUPS)
    pairs = unindexed()
    for field in ("owner", "day", "cost_usd", schema.TTL_FIELD):
        assert (schema.SPEND, field) in pairs  # the shards an upgrade leaves
    for field in (schema.OWNER, schema.DAY, schema.CALLS, schema.TTL_FIELD):
        assert (schema.SPEND_TURNS, field) in pairs
    for field in (schema.STATE, schema.OUTPUT, schema.STARTED_AT, schema.WRITER):
        assert (schema.TOOL_RUNS, field) in pairs
    assert (schema.SESSIONS, schema.USAGE) in pairs


def test_a_group_without_a_document_type_is_refused() -> None:
    sys.path.insert(0, str(REPO / "deploy"))
    try:
        import collection_groups
    finally:
        sys.path.remove(str(REPO / "deploy"))
    partial = {k: v for k, v in collection_groups.DOC_TYPES.items() if v != "SPEND"}
    with pytest.raises(collection_groups.Unresolvable, match="agent_spend"):
        collection_groups.unindexed(partial)
