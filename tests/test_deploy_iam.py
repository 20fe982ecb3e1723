"""The IAM grants deploy/setup.sh makes are exactly the intended least-privilege set: the
runtime, deployer and builder accounts each get the listed roles on the listed resources and
nothing else (the runtime account nothing project-wide beyond Firestore, nobody a basic role),
project bindings state their condition so gcloud accepts them non-interactively, and a binding
refused while a new account propagates is retried until it holds. With
``MODEL_PROVIDER=vertex`` the runtime account calls Gemini (``roles/aiplatform.user``) and
nobody gets a role on a secret, since there is none. And (issue 19) the grants suffice: setup,
a first pipeline deploy and a second run against the permission model
(tests/support/iam_model.py), each deploy as the deployer in the deploy build's environment,
and every call is permitted.
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


def expected_bindings(provider: str = "openai") -> set[tuple[str, str, str, str, str | None]]:
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    builder = "serviceAccount:" + sa_email("BUILDER_SA_NAME")
    tester = "serviceAccount:" + sa_email("TESTER_SA_NAME")
    results = "gs://" + expanded("RESULTS_BUCKET")
    source = "gs://" + expanded("BUILD_SOURCE_BUCKET")
    database = f"projects/{PROJECT}/databases/{expanded('FIRESTORE_DATABASE')}"
    gcf_sources = (
        'expression=resource.name.startsWith("projects/_/buckets/gcf-v2-sources-"),'
        "title=gcf-v2-sources-only"
    )
    signer = f"projects/{PROJECT}/roles/{expanded('SIGNER_ROLE_ID')}"
    deploy_role = f"projects/{PROJECT}/roles/{expanded('DEPLOY_ROLE_ID')}"
    bindings = {
        # runtime: Firestore in its one database, one bucket, one secret, signBlob on itself
        (
            "projects",
            PROJECT,
            runtime,
            "roles/datastore.user",
            f'expression=resource.name == "{database}",title=agent-database-only',
        ),
        ("projects", PROJECT, runtime, "roles/telemetry.tracesWriter", None),
        # runtime: enqueue into the runs' queue, name the invoker in the tasks' OIDC tokens
        ("queues", expanded("RUNS_QUEUE_NAME"), runtime, "roles/cloudtasks.enqueuer", None),
        (
            "service-accounts",
            sa_email("INVOKER_SA_NAME"),
            runtime,
            "roles/iam.serviceAccountUser",
            None,
        ),
        ("buckets", results, runtime, "roles/storage.objectUser", None),
        ("secrets", expanded("SECRET_NAME"), runtime, "roles/secretmanager.secretAccessor", None),
        ("service-accounts", sa_email("RUNTIME_SA_NAME"), runtime, signer, None),
        # deployer: Google's documented deployer role on the project (gcloud functions deploy
        # needs sourceCodeSet on the location and projects.get, not only the function), the
        # privacy check's reads (custom role), log, act as runtime and builder, read staged
        # source, list the secret's versions
        ("projects", PROJECT, deployer, "roles/cloudfunctions.developer", None),
        ("projects", PROJECT, deployer, deploy_role, None),
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
        ("secrets", expanded("SECRET_NAME"), deployer, "roles/secretmanager.viewer", None),
        # builder: log, push the image to the one repository, read the staged source only
        ("projects", PROJECT, builder, "roles/logging.logWriter", None),
        (
            "repositories",
            expanded("ARTIFACT_REPOSITORY"),
            builder,
            "roles/artifactregistry.writer",
            None,
        ),
        ("projects", PROJECT, builder, "roles/storage.objectAdmin", gcf_sources),
        # tester: its log and the uploaded source, nothing else
        ("projects", PROJECT, tester, "roles/logging.logWriter", None),
        ("buckets", source, tester, "roles/storage.objectViewer", None),
    }
    if provider == "vertex":
        # No secret to read or to list; Gemini on Vertex AI with the runtime's own token.
        bindings = {b for b in bindings if b[0] != "secrets"}
        bindings.add(("projects", PROJECT, runtime, "roles/aiplatform.user", None))
    return bindings


EXPECTED_ROLES = {
    "SIGNER_ROLE_ID": ["iam.serviceAccounts.signBlob"],
    "DEPLOY_ROLE_ID": ["run.services.get", "run.services.getIamPolicy"],
}


KIND_OF = {
    ("projects",): "projects",
    ("storage", "buckets"): "buckets",
    ("secrets",): "secrets",
    ("iam", "service-accounts"): "service-accounts",
    ("functions",): "functions",
    ("artifacts", "repositories"): "repositories",
    ("tasks", "queues"): "queues",
    ("run", "services"): "run-services",
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
    # Issue 19: the first deploy leaves nothing for setup to do; no "run setup again".
    assert recorded_bindings(scenario.after_deploy) == []
    assert "setup again" not in scenario.setup.output()


def test_custom_roles_hold_exactly_these_permissions(scenario: Scenario) -> None:
    created = {
        argv[3]: flags_of(argv)["permissions"].split(",")
        for argv in scenario.setup.argvs
        if command(argv) == ("iam", "roles", "create")
    }
    assert created == {expanded(name): perms for name, perms in EXPECTED_ROLES.items()}
    for argv in scenario.setup.argvs:
        if command(argv) == ("iam", "roles", "create"):
            assert flags_of(argv)["project"] == PROJECT and flags_of(argv)["stage"] == "GA"


def test_least_privilege(scenario: Scenario) -> None:
    """Issue 10 item 7, revised by issue 19: the deployer alone holds a Cloud Functions role
    (Developer, never Admin: it cannot change who may invoke), the runtime account signs as
    itself through signBlob alone and reaches only its database, and the image build writes
    to its one repository."""
    everything = expected_bindings()
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    functions_roles = {(b[2], b[3]) for b in everything if b[3].startswith("roles/cloudfunctions.")}
    assert functions_roles == {(deployer, "roles/cloudfunctions.developer")}
    assert not any(b[3] == "roles/iam.serviceAccountTokenCreator" for b in everything)
    assert not any(
        b[3] == "roles/artifactregistry.writer" and b[0] == "projects" for b in everything
    )
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    (datastore,) = [b for b in everything if b[2] == runtime and b[3] == "roles/datastore.user"]
    assert datastore[4] is not None and "databases/" in datastore[4]


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


def test_vertex_iam_roles_are_exactly_these(vertex_scenario: Scenario) -> None:
    recorded = recorded_bindings(vertex_scenario.setup)
    assert len(recorded) == len(set(recorded)), "a binding was added twice"
    assert set(recorded) == expected_bindings(provider="vertex")
    assert recorded_bindings(vertex_scenario.after_deploy) == []
    assert not [b for b in recorded if b[0] == "secrets" or "secretmanager" in b[3]]


def test_vertex_runtime_account_calls_gemini_and_nothing_more(vertex_scenario: Scenario) -> None:
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    project_roles = {
        (b[3], b[4])
        for b in recorded_bindings(vertex_scenario.setup)
        if b[0] == "projects" and b[2] == runtime
    }
    assert {role for role, _ in project_roles} == {
        "roles/datastore.user",
        "roles/telemetry.tracesWriter",
        "roles/aiplatform.user",
    }
    assert ("roles/aiplatform.user", None) in project_roles
    for argv in vertex_scenario.setup.argvs:
        if command(argv) == ("projects", "add-iam-policy-binding"):
            assert "condition" in flags_of(argv), argv


# --- Issue 19: the permission model (tests/support/iam_model.py) -------------------------


def denied_calls(scenario: Scenario) -> list[str]:
    """Every call of the scenario that the permission model refused, with why."""
    out = []
    for call in scenario.all_calls():
        refused = [c for c in call.get("checks", []) if not c[3]]
        if refused or call["exit"] == 97:
            out.append(f"{call.get('caller')}: gcloud {' '.join(call['argv'][:4])}: {refused}")
    return out


@pytest.mark.parametrize("which", ["scenario", "vertex_scenario"])
def test_setup_then_two_pipeline_deploys_are_permitted_at_every_call(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Issue 19 item 1: setup as the owner, then the pipeline twice. Its deploy build runs
    deploy/deploy.sh as the deployer account, with the build's own environment: the first
    creates the function, the second updates it. Every call, and every check a call makes
    for another account (the image build, the build's log and source), is permitted by the
    roles setup granted; nothing is left for a second setup run."""
    run: Scenario = request.getfixturevalue(which)
    assert denied_calls(run) == []
    for deploy in (run.deploy, run.redeploy):
        assert deploy.result.returncode == 0, deploy.output()
        (call,) = [c for c in deploy.calls if c["argv"][:2] == ["functions", "deploy"]]
        assert call["caller"] == "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
        assert call["checks"], "the deploy was not checked against the model"
    create = {
        c[1]
        for c in run.deploy.calls
        if c["argv"][:2] == ["functions", "deploy"]
        for c in c["checks"]
    }
    update = {
        c[1]
        for c in run.redeploy.calls
        if c["argv"][:2] == ["functions", "deploy"]
        for c in c["checks"]
    }
    assert "cloudfunctions.functions.create" in create - update
    assert "cloudfunctions.functions.update" in update - create
    assert {"cloudfunctions.functions.sourceCodeSet", "resourcemanager.projects.get"} <= create


def test_every_call_is_modelled(scenario: Scenario) -> None:
    """A gcloud call the model has no entry for would pass unchecked: the fake refuses it."""
    for call in scenario.all_calls():
        assert call["exit"] != 97, call
        assert "checks" in call, call


def test_the_model_refuses_a_deployer_without_the_project_role() -> None:
    """The model catches what issue 19 found: a deployer whose Cloud Functions role is
    bound on the function alone cannot ask for an upload URL on the location."""
    from tests.support.iam_model import allowed

    p = f"projects/{PROJECT}"
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    on_function = [
        (f"{p}/locations/r/functions/f", "roles/cloudfunctions.developer", deployer, None)
    ]
    on_project = [(p, "roles/cloudfunctions.developer", deployer, None)]
    perm = "cloudfunctions.functions.sourceCodeSet"
    assert not allowed(on_function, {}, deployer, perm, f"{p}/locations/r", PROJECT)
    assert allowed(on_project, {}, deployer, perm, f"{p}/locations/r", PROJECT)
    # A condition narrows a project binding to the resources it names.
    cond = 'expression=resource.name.startsWith("projects/_/buckets/gcf-v2-sources-"),title=t'
    viewer = [(p, "roles/storage.objectViewer", deployer, cond)]
    assert allowed(
        viewer,
        {},
        deployer,
        "storage.objects.get",
        "projects/_/buckets/gcf-v2-sources-1-r/objects/x",
        PROJECT,
    )
    assert not allowed(
        viewer, {}, deployer, "storage.objects.get", "projects/_/buckets/other/objects/x", PROJECT
    )
