"""deploy/setup.sh provisions the project once and safely again: exactly the APIs the service
needs, a native Firestore database where the config says, the results bucket locked down with
its retention rule, and the model key stored in Secret Manager from stdin only, never in an
argument, a log or the output. A second run changes nothing, a run on a partly provisioned
project adds only what is missing and corrects what is there, and ``--dry-run`` calls nothing
and prints exactly what a first run does. With ``MODEL_PROVIDER=vertex`` there is no key:
Vertex AI's API instead of Secret Manager's, and no secret created, filled or asked for.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    CONFIG,
    EXPECTED_APIS,
    VERTEX,
    VERTEX_APIS,
    Run,
    Scenario,
    calls_of,
    command,
    expanded,
    flags_of,
    is_mutating,
    normalized,
    run_script,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


def test_enables_exactly_the_needed_apis(scenario: Scenario) -> None:
    enables = calls_of(scenario.setup, "services", "enable")
    assert len(enables) == 1
    apis = [arg for arg in enables[0][2:] if not arg.startswith("--")]
    assert len(apis) == len(set(apis))
    assert set(apis) == EXPECTED_APIS


def test_creates_a_native_firestore_database_in_the_configured_location(
    scenario: Scenario,
) -> None:
    (create,) = calls_of(scenario.setup, "firestore", "databases", "create")
    flags = flags_of(create)
    assert flags["type"] == "firestore-native"
    assert flags["location"] == expanded("FIRESTORE_LOCATION") == expanded("REGION")
    assert flags["database"] == expanded("FIRESTORE_DATABASE")


def bucket_create(run: Run, bucket: str) -> list[str]:
    (argv,) = [a for a in calls_of(run, "storage", "buckets", "create") if a[3] == bucket]
    return argv


def test_results_bucket_flags_and_lifecycle(scenario: Scenario) -> None:
    bucket = "gs://" + expanded("RESULTS_BUCKET")
    argv = bucket_create(scenario.setup, bucket)
    flags = flags_of(argv)
    assert "uniform-bucket-level-access" in flags and flags["uniform-bucket-level-access"] == ""
    assert "pap" in flags and flags["pap"] == ""
    assert flags["location"] == expanded("REGION")
    (record,) = [c for c in scenario.setup.calls if c["argv"] == argv]
    assert record["lifecycle"] == {
        "rule": [
            {
                "action": {"type": "Delete"},
                "condition": {"age": int(CONFIG["RESULTS_RETENTION_DAYS"])},
            }
        ]
    }
    assert CONFIG["RESULTS_RETENTION_DAYS"] == "7"


def test_secret_created_and_filled_from_stdin_only(scenario: Scenario) -> None:
    name = expanded("SECRET_NAME")
    (create,) = calls_of(scenario.setup, "secrets", "create")
    assert create[2] == name and flags_of(create)["replication-policy"] == "automatic"
    adds = [
        c
        for c in scenario.setup.calls
        if command(list(c["argv"])) == ("secrets", "versions", "add")
    ]
    assert len(adds) == 1
    assert flags_of(list(adds[0]["argv"]))["data-file"] == "-"
    # What reached gcloud's stdin is the key itself, without the newline it was piped with.
    assert adds[0]["stdin"] == {
        "sha256": hashlib.sha256(scenario.secret.encode()).hexdigest(),
        "length": len(scenario.secret),
    }


def test_secret_value_never_appears_in_argv_logs_or_output(scenario: Scenario) -> None:
    haystacks = {
        "recorded calls": (scenario.fake_dir / "calls.jsonl").read_text(),
        "fake state": (scenario.fake_dir / "state.json").read_text(),
        "setup output": scenario.setup.output(),
        "second setup output": scenario.second.output(),
        "deploy output": scenario.deploy.output(),
        "pipeline output": scenario.pipeline.output(),
    }
    for where, text in haystacks.items():
        assert scenario.secret not in text, f"secret value found in {where}"
        assert scenario.secret[8:] not in text, f"part of the secret value found in {where}"


def test_setup_without_a_key_fails_clearly_and_adds_no_version(tmp_path: Path) -> None:
    run = run_script("setup.sh", tmp_path, stdin="", check=False)
    assert run.result.returncode != 0
    assert "pipe the model API key" in run.result.stderr
    assert not calls_of(run, "secrets", "versions", "add")


def test_second_run_changes_nothing(scenario: Scenario) -> None:
    assert scenario.state_after_second == scenario.state_after_setup
    changing = [argv for argv in scenario.second.argvs if is_mutating(argv)]
    # Existing buckets, the repository's cleanup policy and the queue's settings are
    # re-applied (same values, no change); nothing else.
    reapplied = {
        ("storage", "buckets", "update"),
        ("artifacts", "repositories", "set-cleanup-policies"),
        ("tasks", "queues", "update"),
    }
    assert all(command(argv) in reapplied for argv in changing), changing
    assert "already has a value" in scenario.second.result.stderr


def test_only_missing_apis_are_enabled(partial_project: Run) -> None:
    (enable,) = calls_of(partial_project, "services", "enable")
    assert [a for a in enable[2:] if not a.startswith("--")] == ["run.googleapis.com"]


def test_an_existing_bucket_is_corrected_not_created(partial_project: Run) -> None:
    results = "gs://" + expanded("RESULTS_BUCKET")
    assert results not in [a[3] for a in calls_of(partial_project, "storage", "buckets", "create")]
    (update,) = [
        a for a in calls_of(partial_project, "storage", "buckets", "update") if a[3] == results
    ]
    assert {"uniform-bucket-level-access", "pap", "lifecycle-file"} <= set(flags_of(update))


def test_retention_override_reaches_the_lifecycle_rule(partial_project: Run) -> None:
    results = "gs://" + expanded("RESULTS_BUCKET")
    (record,) = [
        c
        for c in partial_project.calls
        if list(c["argv"])[:4] == ["storage", "buckets", "update", results]
    ]
    assert record["lifecycle"] == {
        "rule": [{"action": {"type": "Delete"}, "condition": {"age": 3}}]
    }


def test_dry_run_calls_nothing_and_prints_what_a_first_run_does(
    scenario: Scenario, tmp_path: Path
) -> None:
    run = run_script("setup.sh", tmp_path, "--dry-run")
    assert run.calls == [], "a dry run must not call gcloud"
    printed = [normalized(shlex.split(line)[1:]) for line in run.result.stdout.splitlines()]
    assert all(line[:1] != ["gcloud"] for line in printed)
    performed = [normalized(argv) for argv in scenario.setup.argvs if is_mutating(argv)]
    assert printed == performed


def test_vertex_enables_vertex_ai_instead_of_secret_manager(vertex_scenario: Scenario) -> None:
    (enable,) = calls_of(vertex_scenario.setup, "services", "enable")
    apis = [arg for arg in enable[2:] if not arg.startswith("--")]
    assert len(apis) == len(set(apis))
    assert set(apis) == VERTEX_APIS
    assert "aiplatform.googleapis.com" in apis and "secretmanager.googleapis.com" not in apis


def test_vertex_creates_no_secret_and_says_so(vertex_scenario: Scenario) -> None:
    """No key was piped in and none is asked for: setup never touches Secret Manager, not
    even to look, and the log says why."""
    for run in vertex_scenario.runs():
        assert not [argv for argv in run.argvs if argv[0] == "secrets"], run.argvs
    state = json.loads((vertex_scenario.fake_dir / "state.json").read_text())
    assert state["secrets"] == {} and state["function_secrets"] == {}
    assert "MODEL_PROVIDER=vertex: no model secret" in vertex_scenario.setup.result.stderr
    assert "pipe the model API key" not in vertex_scenario.setup.output()


def test_vertex_second_run_changes_nothing(vertex_scenario: Scenario) -> None:
    assert vertex_scenario.state_after_second == vertex_scenario.state_after_setup
    changing = [argv for argv in vertex_scenario.second.argvs if is_mutating(argv)]
    reapplied = {
        ("storage", "buckets", "update"),
        ("artifacts", "repositories", "set-cleanup-policies"),
        ("tasks", "queues", "update"),
    }
    assert all(command(argv) in reapplied for argv in changing), changing


def test_vertex_dry_run_prints_what_a_first_run_does(
    vertex_scenario: Scenario, tmp_path: Path
) -> None:
    run = run_script("setup.sh", tmp_path, "--dry-run", env=VERTEX)
    assert run.calls == []
    printed = [normalized(shlex.split(line)[1:]) for line in run.result.stdout.splitlines()]
    performed = [normalized(argv) for argv in vertex_scenario.setup.argvs if is_mutating(argv)]
    assert printed == performed
    assert not any(argv[0] == "secrets" for argv in printed)


@pytest.mark.parametrize("script", ["setup.sh", "deploy.sh", "pipeline.sh"])
@pytest.mark.parametrize("provider", ["Vertex", "gemini"])
def test_an_unknown_model_provider_is_refused_before_any_call(
    tmp_path: Path, script: str, provider: str
) -> None:
    run = run_script(script, tmp_path, stdin="key", env={"MODEL_PROVIDER": provider}, check=False)
    assert run.result.returncode != 0
    assert f"MODEL_PROVIDER={provider}: use openai" in run.result.stderr
    assert run.calls == []


def test_setup_waits_for_a_new_database_before_its_ttl_policies(partial_project: Run) -> None:
    """Issue 19 item 6: CreateDatabase returns before the database exists."""
    argvs = partial_project.argvs
    create = argvs.index(calls_of(partial_project, "firestore", "databases", "create")[0])
    describes = [
        i for i, a in enumerate(argvs) if command(a) == ("firestore", "databases", "describe")
    ]
    waits = [i for i in describes if i > create]
    assert len(waits) == 3, "two NOT_FOUND answers, then the database"
    first_ttl = min(
        i for i, a in enumerate(argvs) if command(a) == ("firestore", "fields", "ttls", "update")
    )
    assert waits[-1] < first_ttl
    assert partial_project.calls[waits[-1]]["exit"] == 0


@pytest.mark.parametrize("flag", ["--enable-ttl", "--disable-indexes"])
def test_field_updates_refused_with_409_are_retried(partial_project: Run, flag: str) -> None:
    """Issue 19 item 6: a burst of TTL and index-field updates draws 409s."""
    calls = [c for c in partial_project.calls if flag in c["argv"]]
    assert calls[0]["exit"] == 1 and calls[1]["exit"] == 0
    assert calls[0]["argv"] == calls[1]["argv"]
    assert all(c["exit"] == 0 for c in calls[1:])
    succeeded = {json.dumps(c["argv"]) for c in calls if c["exit"] == 0}
    assert len(succeeded) == len({json.dumps(c["argv"]) for c in calls}), "one was given up"


def test_the_database_is_created_with_delete_protection(scenario: Scenario) -> None:
    """Issue 19 item 8."""
    (create,) = calls_of(scenario.setup, "firestore", "databases", "create")
    assert "--delete-protection" in create


def test_the_image_repository_has_a_cleanup_policy_that_keeps_recent_images(
    scenario: Scenario,
) -> None:
    """Issue 19 item 8: images older than the retention are deleted, the most recent kept
    (keep wins over delete), in the format gcloud 528 parses
    (command_lib/artifacts/cleanup_policy_util.py: a list; each has name, action.type and
    exactly one of condition or mostRecentVersions; durations like "30d")."""
    (call,) = [
        c
        for c in scenario.setup.calls
        if command(list(c["argv"])) == ("artifacts", "repositories", "set-cleanup-policies")
    ]
    argv = list(call["argv"])
    assert argv[3] == expanded("ARTIFACT_REPOSITORY") and "--no-dry-run" in argv
    policy = call["cleanup_policy"]
    assert isinstance(policy, list)
    for rule in policy:
        assert {"name", "action"} <= set(rule) and rule["action"]["type"] in ("Delete", "Keep")
        assert ("condition" in rule) != ("mostRecentVersions" in rule)
    by_type = {rule["action"]["type"]: rule for rule in policy}
    assert by_type["Delete"]["condition"] == {"olderThan": f"{CONFIG['ARTIFACT_RETENTION_DAYS']}d"}
    assert by_type["Keep"]["mostRecentVersions"] == {
        "keepCount": int(CONFIG["ARTIFACT_KEEP_VERSIONS"])
    }
