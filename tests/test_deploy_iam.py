"""The IAM grants deploy/setup.sh makes are exactly the intended least-privilege set: the
runtime, deployer and builder accounts each get the listed roles on the listed resources and
nothing else (the runtime account nothing project-wide beyond Firestore, nobody a basic role),
project bindings state their condition so gcloud accepts them non-interactively, and a binding
refused while a new account propagates is retried until it holds.
"""

from __future__ import annotations

import pytest

from tests.support.deploy_scenarios import (
    PROJECT,
    Run,
    Scenario,
    command,
    expanded,
    flags_of,
    sa_email,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


def expected_bindings() -> set[tuple[str, str, str, str, str | None]]:
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    builder = "serviceAccount:" + sa_email("BUILDER_SA_NAME")
    results = "gs://" + expanded("RESULTS_BUCKET")
    source = "gs://" + expanded("BUILD_SOURCE_BUCKET")
    gcf_sources = (
        'expression=resource.name.startsWith("projects/_/buckets/gcf-v2-sources-"),'
        "title=gcf-v2-sources-only"
    )
    return {
        # runtime: Firestore and trace writing project-wide, one bucket, one secret, token
        # creator on itself
        ("projects", PROJECT, runtime, "roles/datastore.user", None),
        ("projects", PROJECT, runtime, "roles/telemetry.tracesWriter", None),
        ("buckets", results, runtime, "roles/storage.objectUser", None),
        (
            "secrets",
            expanded("SECRET_NAME"),
            runtime,
            "roles/secretmanager.secretAccessor",
            None,
        ),
        (
            "service-accounts",
            sa_email("RUNTIME_SA_NAME"),
            runtime,
            "roles/iam.serviceAccountTokenCreator",
            None,
        ),
        # deployer: deploy functions, log, act as runtime and builder, read staged source
        ("projects", PROJECT, deployer, "roles/cloudfunctions.developer", None),
        ("projects", PROJECT, deployer, "roles/logging.logWriter", None),
        (
            "service-accounts",
            sa_email("RUNTIME_SA_NAME"),
            deployer,
            "roles/iam.serviceAccountUser",
            None,
        ),
        (
            "service-accounts",
            sa_email("BUILDER_SA_NAME"),
            deployer,
            "roles/iam.serviceAccountUser",
            None,
        ),
        ("buckets", source, deployer, "roles/storage.objectViewer", None),
        # builder: log, push the image, read Cloud Functions' staged source only
        ("projects", PROJECT, builder, "roles/logging.logWriter", None),
        ("projects", PROJECT, builder, "roles/artifactregistry.writer", None),
        ("projects", PROJECT, builder, "roles/storage.objectViewer", gcf_sources),
    }


KIND_OF = {
    ("projects",): "projects",
    ("storage", "buckets"): "buckets",
    ("secrets",): "secrets",
    ("iam", "service-accounts"): "service-accounts",
}


def recorded_bindings(run: Run) -> list[tuple[str, str, str, str, str | None]]:
    out = []
    for argv in run.argvs:
        words = command(argv)
        if words[-1:] != ("add-iam-policy-binding",):
            continue
        kind = KIND_OF[words[:-1]]
        flags = flags_of(argv)
        condition = flags.get("condition")
        out.append(
            (
                kind,
                argv[len(words)],
                flags["member"],
                flags["role"],
                None if condition == "None" else condition,
            )
        )
    return out


def test_iam_roles_are_exactly_these_and_granted_where_expected(
    scenario: Scenario,
) -> None:
    recorded = recorded_bindings(scenario.setup)
    assert len(recorded) == len(set(recorded)), "a binding was added twice"
    assert set(recorded) == expected_bindings()


def test_runtime_account_has_nothing_project_wide_beyond_firestore_and_traces(
    scenario: Scenario,
) -> None:
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    project_roles = {
        b[3] for b in recorded_bindings(scenario.setup) if b[0] == "projects" and b[2] == runtime
    }
    assert project_roles == {"roles/datastore.user", "roles/telemetry.tracesWriter"}
    for binding in recorded_bindings(scenario.setup):
        assert not binding[3].startswith(("roles/owner", "roles/editor", "roles/viewer")), binding


def test_project_bindings_state_their_condition(scenario: Scenario) -> None:
    # Without --condition, gcloud refuses a binding in non-interactive mode once the project
    # policy holds any conditional binding, which this setup itself adds.
    for argv in scenario.setup.argvs:
        if command(argv) == ("projects", "add-iam-policy-binding"):
            assert "condition" in flags_of(argv), argv


def test_iam_bindings_retry_while_a_new_account_propagates(
    partial_project: Run,
) -> None:
    binding_calls = [c for c in partial_project.calls if "add-iam-policy-binding" in c["argv"]]
    assert binding_calls[0]["exit"] == 1 and binding_calls[1]["exit"] == 0
    assert binding_calls[0]["argv"] == binding_calls[1]["argv"]
    assert set(recorded_bindings(partial_project)) == expected_bindings()
