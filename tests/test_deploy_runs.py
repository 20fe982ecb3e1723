"""Issue 21 in the deploy: the background runs' Cloud Tasks queue (every retry and rate
setting stated), the invoker account (it may invoke the function and nothing else), the
runtime's two grants (enqueue into that queue, name the invoker in the tasks' tokens), the
settings the deploy hands the service, and the webhook signing secret (made by setup,
passed by reference only). All against the fake gcloud and the permission model
(tests/support/iam_model.py): each grant is shown to be enough, and not more."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    PROJECT,
    Run,
    Scenario,
    calls_of,
    command,
    env_of,
    expanded,
    flags_of,
    pipeline_and_deploy,
    run_script,
    sa_email,
)
from tests.support.iam_model import allowed

pytestmark = pytest.mark.usefixtures("repo_on_path")

QUEUE_FLAGS = {
    "max-attempts": "RUNS_QUEUE_MAX_ATTEMPTS",
    "max-retry-duration": "RUNS_QUEUE_MAX_RETRY_DURATION",
    "min-backoff": "RUNS_QUEUE_MIN_BACKOFF",
    "max-backoff": "RUNS_QUEUE_MAX_BACKOFF",
    "max-doublings": "RUNS_QUEUE_MAX_DOUBLINGS",
    "max-dispatches-per-second": "RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND",
    "max-concurrent-dispatches": "RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES",
}
HOSTS = {"WEBHOOK_ALLOWED_HOSTS": "hooks.example.com ops.example.org"}


def bindings_of(run: Run) -> list[tuple[str, str, str, str]]:
    """(command, resource, member, role) of every binding a run added."""
    out = []
    for argv in run.argvs:
        words = command(argv)
        if words[-1:] == ("add-iam-policy-binding",):
            flags = flags_of(argv)
            out.append((" ".join(words[:-1]), argv[len(words)], flags["member"], flags["role"]))
    return out


def denied(runs: list[Run]) -> list[str]:
    return [
        f"{call.get('caller')}: gcloud {' '.join(call['argv'][:4])}"
        for run in runs
        for call in run.calls
        if call["exit"] == 97 or any(not check[3] for check in call.get("checks", []))
    ]


def test_setup_creates_the_queue_with_every_retry_and_rate_setting_stated(
    scenario: Scenario,
) -> None:
    (create,) = calls_of(scenario.setup, "tasks", "queues", "create")
    assert create[3] == expanded("RUNS_QUEUE_NAME") == "agent-runs"
    flags = flags_of(create)
    assert flags["location"] == expanded("REGION")
    assert {flag: flags[flag] for flag in QUEUE_FLAGS} == {
        flag: expanded(knob) for flag, knob in QUEUE_FLAGS.items()
    }
    # A run's own limit (RUN_MAX_SECONDS, 3600 s) bounds the retries, with a margin.
    from agent.base.settings import Settings

    assert int(flags["max-retry-duration"].removesuffix("s")) > Settings.run_max_seconds
    # Setup again: the same settings re-applied to the existing queue, nothing created.
    assert not calls_of(scenario.second, "tasks", "queues", "create")
    (update,) = calls_of(scenario.second, "tasks", "queues", "update")
    assert flags_of(update) == flags


def test_the_invoker_may_invoke_the_function_and_nothing_else(scenario: Scenario) -> None:
    invoker = "serviceAccount:" + sa_email("INVOKER_SA_NAME")
    created = [argv[3] for argv in calls_of(scenario.setup, "iam", "service-accounts", "create")]
    assert expanded("INVOKER_SA_NAME") in created
    # The function's service exists only after the first deploy: the pipeline (as the
    # operator) grants it then, once; setup never needs a second run for it.
    granted = [b for run in scenario.runs() for b in bindings_of(run) if b[2] == invoker]
    assert granted == [("run services", expanded("FUNCTION_NAME"), invoker, "roles/run.invoker")]
    assert granted[0] in bindings_of(scenario.pipeline)
    assert not [b for b in bindings_of(scenario.after_deploy) if b[2] == invoker]
    assert "setup again" not in scenario.setup.output()


def test_the_runtime_may_enqueue_and_name_the_invoker_and_no_more(scenario: Scenario) -> None:
    state = json.loads((scenario.fake_dir / "state.json").read_text())
    bindings = [tuple(b) for b in state["iam"]]
    custom = state["roles"]
    location = f"projects/{PROJECT}/locations/{expanded('REGION')}"
    queue = f"{location}/queues/{expanded('RUNS_QUEUE_NAME')}"
    service = f"{location}/services/{expanded('FUNCTION_NAME')}"
    invoker_sa = f"projects/{PROJECT}/serviceAccounts/{sa_email('INVOKER_SA_NAME')}"
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    invoker = "serviceAccount:" + sa_email("INVOKER_SA_NAME")
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")

    def may(member: str, permission: str, resource: str) -> bool:
        return allowed(bindings, custom, member, permission, resource, PROJECT)  # type: ignore[arg-type]

    # What CloudTasksQueue.enqueue needs: create a task in the queue, and (for its OIDC
    # token) act as the invoker account; what the task needs: invoke the function.
    assert may(runtime, "cloudtasks.tasks.create", queue)
    assert may(runtime, "iam.serviceAccounts.actAs", invoker_sa)
    assert may(invoker, "run.routes.invoke", service)
    # And not more: no other queue, no queue administration, no invoking the function
    # itself (a caller's token never stands in for a task's), nothing for the invoker
    # beyond that one service; the deployer cannot grant any of this.
    assert not may(runtime, "cloudtasks.tasks.create", f"{location}/queues/other")
    assert not may(runtime, "cloudtasks.queues.update", queue)
    assert not may(runtime, "run.routes.invoke", service)
    assert not may(invoker, "run.routes.invoke", f"{location}/services/other")
    assert [b for b in bindings if b[2] == invoker] == [
        (service, "roles/run.invoker", invoker, None)
    ]
    assert not may(deployer, "run.services.setIamPolicy", service)
    assert not may(deployer, "cloudtasks.queues.setIamPolicy", queue)


def test_the_deploy_hands_the_service_its_queue_invoker_and_url(scenario: Scenario) -> None:
    from agent.base.settings import Settings
    from agent.runs.cloud_tasks import CloudTasksQueue

    for run in (scenario.deploy, scenario.redeploy):
        (argv,) = calls_of(run, "functions", "deploy")
        env = env_of(flags_of(argv))
        region, name = expanded("REGION"), expanded("FUNCTION_NAME")
        assert env["RUNS_QUEUE"] == (
            f"projects/{PROJECT}/locations/{region}/queues/{expanded('RUNS_QUEUE_NAME')}"
        )
        assert env["RUNS_INVOKER"] == sa_email("INVOKER_SA_NAME")
        # The function's own URL: where tasks go, and their tokens' audience, which the
        # service accepts (AUTH_AUDIENCE).
        assert env["RUNS_TARGET_URL"] == f"https://{region}-{PROJECT}.cloudfunctions.net/{name}"
        assert env["RUNS_TARGET_URL"] in env["AUTH_AUDIENCE"].split(",")
        # Webhooks off by default: no hosts, no secret.
        assert "WEBHOOK_ALLOWED_HOSTS" not in env
        assert "WEBHOOK_SIGNING_SECRET" not in flags_of(argv)["set-secrets"]
        settings = Settings.from_env(env | {"K_SERVICE": name})
        CloudTasksQueue(settings)  # everything it needs is there


@pytest.fixture(scope="module")
def with_webhooks(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """Setup with WEBHOOK_ALLOWED_HOSTS set, then the pipeline and its deploy build, all
    under the permission model."""
    fake = tmp_path_factory.mktemp("fake-gcloud-webhooks")
    setup = run_script("setup.sh", fake, stdin="sk-test-key\n", env=HOSTS)
    staging_setup = run_script("setup.sh", fake, "--staging", stdin="", env=HOSTS)
    pipeline, staging, deploy = pipeline_and_deploy(fake, HOSTS)
    return Scenario(
        fake,
        "sk-test-key",
        setup,
        "",
        setup,
        "",
        pipeline,
        deploy,
        setup,
        pipeline,
        deploy,
        HOSTS,
        staging_setup,
        staging,
    )


def test_with_webhooks_setup_makes_the_signing_secret_without_showing_it(
    with_webhooks: Scenario,
) -> None:
    name = expanded("WEBHOOK_SECRET_NAME")
    setup = with_webhooks.setup
    assert ["secrets", "create", name] == calls_of(setup, "secrets", "create")[-1][:3]
    (add,) = [
        c
        for c in setup.calls
        if command(c["argv"]) == ("secrets", "versions", "add") and c["argv"][3] == name
    ]
    assert flags_of(add["argv"])["data-file"] == "-"
    # whsec_ and the base64 of 32 random bytes: 6 + 44 characters, through stdin only.
    assert add["stdin"]["length"] == 50
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    assert {b for b in bindings_of(setup) if b[1] == name} == {
        ("secrets", name, runtime, "roles/secretmanager.secretAccessor"),
        ("secrets", name, deployer, "roles/secretmanager.viewer"),
    }
    assert "whsec_" not in (with_webhooks.fake_dir / "calls.jsonl").read_text()
    assert "whsec_" not in setup.output() + with_webhooks.pipeline.output()


def test_with_webhooks_the_deploy_passes_hosts_and_the_pinned_secret(
    with_webhooks: Scenario,
) -> None:
    from agent.base.settings import Settings

    assert denied([with_webhooks.setup, with_webhooks.pipeline, with_webhooks.deploy]) == []
    (argv,) = calls_of(with_webhooks.deploy, "functions", "deploy")
    flags = flags_of(argv)
    assert flags["set-secrets"] == (
        f"OPENAI_API_KEY={expanded('SECRET_NAME')}:1,"
        f"WEBHOOK_SIGNING_SECRET={expanded('WEBHOOK_SECRET_NAME')}:1"
    )
    env = env_of(flags)
    assert env["WEBHOOK_ALLOWED_HOSTS"] == "hooks.example.com,ops.example.org"
    assert "WEBHOOK_SIGNING_SECRET" not in env
    Settings.from_env(env | {"K_SERVICE": expanded("FUNCTION_NAME")})


def test_vertex_with_webhooks_keeps_secret_manager_for_the_signing_secret(
    tmp_path: Path,
) -> None:
    env = {"MODEL_PROVIDER": "vertex", **HOSTS}
    setup = run_script("setup.sh", tmp_path, "--dry-run", env=env)
    printed = [shlex.split(line) for line in setup.result.stdout.splitlines()]
    (enable,) = [p for p in printed if p[1:3] == ["services", "enable"]]
    assert "secretmanager.googleapis.com" in enable and "aiplatform.googleapis.com" in enable
    deploy = run_script("deploy.sh", tmp_path, "--dry-run", env=env)
    (line,) = [p for p in map(shlex.split, deploy.result.stdout.splitlines()) if "deploy" in p]
    flags = flags_of(line)
    # --set-secrets replaces every secret of the revision: no model key survives.
    assert flags["set-secrets"] == (
        f"WEBHOOK_SIGNING_SECRET={expanded('WEBHOOK_SECRET_NAME')}:LATEST_ENABLED_VERSION"
    )
    assert "clear-secrets" not in flags


@pytest.mark.parametrize(
    "hosts", ["https://hooks.example.com", "hooks.example.com:8443", "a/b", "-x.example"]
)
def test_a_webhook_host_the_service_would_refuse_stops_the_deploy_first(
    tmp_path: Path, hosts: str
) -> None:
    run = run_script("deploy.sh", tmp_path, env={"WEBHOOK_ALLOWED_HOSTS": hosts}, check=False)
    assert run.result.returncode != 0
    assert "is not a bare host name" in run.result.stderr
    assert run.calls == []


@pytest.mark.parametrize("script", ["pipeline.sh", "setup.sh"])
def test_the_invoker_grant_is_made_where_the_function_exists(tmp_path: Path, script: str) -> None:
    """The pipeline after its deploy build (here: a function that exists already, the
    binding missing), and setup when it finds the function."""
    name = expanded("FUNCTION_NAME")
    state = {"iam_checks": False, "functions": [name], "function_services": {name: "svc-1"}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    run = run_script(script, tmp_path, stdin="sk-test-key\n")
    invoker = "serviceAccount:" + sa_email("INVOKER_SA_NAME")
    # On the service the function names (serviceConfig.service), not its own name.
    assert ("run services", "svc-1", invoker, "roles/run.invoker") in bindings_of(run)
    if script == "pipeline.sh":
        # Production's grant follows the last build (staging's follows staging's build).
        words = [command(argv) for argv in run.argvs]
        grant = next(
            i
            for i, argv in enumerate(run.argvs)
            if command(argv) == ("run", "services", "add-iam-policy-binding") and "svc-1" in argv
        )
        assert grant > max(i for i, w in enumerate(words) if w == ("builds", "submit"))
    again = run_script(script, tmp_path, stdin="")
    assert not [b for b in bindings_of(again) if b[2] == invoker]
