"""deploy/deploy.sh deploys the function as this project requires: a private gen2 HTTP
function with a current Python runtime, a size Cloud Run accepts, THREADS equal to the
concurrency, the platform timeout equal to the service's own deadline, the model key from
Secret Manager and only environment variables the service reads, all taken from
deploy/config.env. Inconsistent settings are refused before any gcloud call, and the rules
themselves are shown to catch each kind of bad deploy. With ``MODEL_PROVIDER=vertex`` the
function gets no secret at all (and loses one an earlier deploy gave it), and the service
starts with the Vertex AI environment it is handed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    PROJECT,
    VERTEX,
    Run,
    Scenario,
    calls_of,
    env_of,
    expanded,
    flags_of,
    run_script,
    sa_email,
    seed_secret,
    without_iam,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


MEMORY_RANGE_MIB = {
    1: (512, 4096),
    2: (512, 8192),
    4: (2048, 16384),
    6: (4096, 24576),
    8: (4096, 32768),
}
"""Memory a whole number of vCPUs accepts, from the Cloud Run CPU/memory table."""


def memory_mib(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?[bB]?", text)
    assert match, f"unparseable --memory={text}"
    factor = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "k": 1000 / 2**20,
        "M": 10**6 / 2**20,
        "G": 10**9 / 2**20,
    }
    return float(match.group(1)) * factor.get(match.group(2) or "", 1 / 2**20)


def deploy_problems(argv: list[str]) -> list[str]:
    """What is wrong with a `gcloud functions deploy` call, by this project's rules."""
    flags = flags_of(argv)
    problems: list[str] = []
    for required in ("gen2", "trigger-http", "quiet"):
        if required not in flags:
            problems.append(f"--{required} missing")
    if "allow-unauthenticated" in flags:
        problems.append("--allow-unauthenticated makes the function public")
    if "no-allow-unauthenticated" in flags:
        # On an existing function gcloud then sets the Cloud Run service's IAM policy,
        # which roles/cloudfunctions.developer cannot: every deploy after the first fails.
        problems.append("--no-allow-unauthenticated fails on updates (run.services.setIamPolicy)")
    if flags.get("runtime") not in ("python311", "python312", "python313"):
        problems.append(f"runtime {flags.get('runtime')} is not a current Python runtime")
    if flags.get("entry-point") != "agent_http":
        problems.append("entry point must be agent_http")
    if "cpu" in flags and "memory" not in flags:
        problems.append("--cpu is only accepted with --memory")
    if "cpu" not in flags or "memory" not in flags:
        problems.append("--cpu and --memory must both be set (one place decides the size)")
    cpu = float(flags.get("cpu", "0") or 0)
    concurrency = int(flags.get("concurrency", "1") or 1)
    if concurrency > 1 and cpu < 1:
        problems.append(f"concurrency {concurrency} needs at least 1 vCPU, got {cpu}")
    if cpu > 1 and not cpu.is_integer():
        problems.append("more than 1 vCPU must be a whole number")
    if cpu >= 1 and cpu.is_integer() and "memory" in flags:
        low, high = MEMORY_RANGE_MIB.get(int(cpu), (0, 0))
        if not low <= memory_mib(flags["memory"]) <= high:
            problems.append(f"{flags['memory']} is outside {low}-{high} MiB for {int(cpu)} vCPU")
    env = env_of(flags)
    if env.get("AUTH_PLATFORM_VERIFIED") != "true":
        problems.append("AUTH_PLATFORM_VERIFIED=true missing: the front end strips signatures")
    if not env.get("AUTH_AUDIENCE"):
        problems.append("AUTH_AUDIENCE missing: the service refuses to start without it")
    if flags.get("set-secrets", "").endswith(":latest"):
        problems.append("the secret's version must be pinned, not latest")
    if env.get("THREADS") != str(concurrency):
        problems.append(f"THREADS={env.get('THREADS')} differs from --concurrency={concurrency}")
    timeout = flags.get("timeout", "")
    if timeout != f"{env.get('FUNCTION_TIMEOUT_SECONDS')}s":
        setting = env.get("FUNCTION_TIMEOUT_SECONDS")
        problems.append(f"--timeout={timeout} differs from FUNCTION_TIMEOUT_SECONDS={setting}")
    if int(flags.get("min-instances", "0")) > int(flags.get("max-instances", "0") or 0):
        problems.append("--min-instances above --max-instances")
    if "OPENAI_API_KEY" in env:
        problems.append("the model key must come from Secret Manager, not --set-env-vars")
    if "WEBHOOK_SIGNING_SECRET" in env:
        problems.append("the webhook secret must come from Secret Manager, not --set-env-vars")
    webhook_secret = "WEBHOOK_SIGNING_SECRET=" in flags.get("set-secrets", "")
    if bool(env.get("WEBHOOK_ALLOWED_HOSTS")) != webhook_secret:
        problems.append("WEBHOOK_ALLOWED_HOSTS and the WEBHOOK_SIGNING_SECRET secret go together")
    if env.get("MODEL_PROVIDER") == "vertex":
        if "OPENAI_API_KEY=" in flags.get("set-secrets", ""):
            problems.append(
                "MODEL_PROVIDER=vertex needs no key: no --set-secrets of OPENAI_API_KEY"
            )
        # --set-secrets replaces every secret of the revision, as --clear-secrets does.
        if "clear-secrets" not in flags and not webhook_secret:
            problems.append("--clear-secrets missing: an earlier revision's key would stay")
        if not env.get("VERTEX_LOCATION"):
            problems.append("VERTEX_LOCATION missing")
    else:
        if not flags.get("set-secrets", "").startswith("OPENAI_API_KEY="):
            problems.append("--set-secrets must provide OPENAI_API_KEY")
        if "MODEL_PROVIDER" in env or "VERTEX_LOCATION" in env:
            problems.append("the default provider takes no MODEL_PROVIDER or VERTEX_LOCATION")
    return problems


def the_deploy(run: Run) -> list[str]:
    (argv,) = calls_of(run, "functions", "deploy")
    return argv


def test_deploy_call_passes_every_rule(scenario: Scenario) -> None:
    assert deploy_problems(the_deploy(scenario.deploy)) == []


def test_deploy_flags_come_from_the_config(scenario: Scenario) -> None:
    argv = the_deploy(scenario.deploy)
    flags = flags_of(argv)
    assert argv[2] == expanded("FUNCTION_NAME")
    assert flags["region"] == expanded("REGION")
    assert flags["runtime"] == expanded("RUNTIME") == "python312"
    assert flags["memory"] == expanded("MEMORY")
    assert flags["cpu"] == expanded("CPU")
    assert flags["concurrency"] == expanded("CONCURRENCY")
    assert flags["min-instances"] == expanded("MIN_INSTANCES") == "1"
    assert flags["max-instances"] == expanded("MAX_INSTANCES")
    assert flags["timeout"] == expanded("FUNCTION_TIMEOUT_SECONDS") + "s"
    assert flags["service-account"] == sa_email("RUNTIME_SA_NAME")
    assert (
        flags["build-service-account"]
        == f"projects/{PROJECT}/serviceAccounts/{sa_email('BUILDER_SA_NAME')}"
    )
    # The newest enabled version at deploy time (the fake project has version 1).
    assert flags["set-secrets"] == f"OPENAI_API_KEY={expanded('SECRET_NAME')}:1"
    assert flags["source"] == "."
    assert flags["docker-repository"] == (
        f"projects/{PROJECT}/locations/{expanded('REGION')}/repositories/"
        f"{expanded('ARTIFACT_REPOSITORY')}"
    )


def test_deploy_env_vars_are_settings_the_service_reads(scenario: Scenario) -> None:
    from agent.base.settings import Settings

    flags = flags_of(the_deploy(scenario.deploy))
    env = env_of(flags)
    known = {f.name.upper() for f in fields(Settings)}
    platform = {"THREADS"}  # read by functions-framework's gunicorn
    # Read by the results feature (issue 3) once it lands in agent/settings.py.
    results = {
        "RESULTS_BUCKET",
        "SIGNED_URL_TTL_SECONDS",
        "RESULT_INLINE_MAX_BYTES",
        "SIGNING_SERVICE_ACCOUNT",
    }
    assert set(env) <= known | platform | results, set(env) - known - platform - results
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
    assert env["SIGNING_SERVICE_ACCOUNT"] == sa_email("RUNTIME_SA_NAME")
    assert env["RESULTS_BUCKET"] == expanded("RESULTS_BUCKET")
    assert "OPENAI_BASE_URL" not in env and "MODEL_API" not in env, "empty values are left out"
    # The default provider: OpenAI with the key, as before Vertex AI was an option.
    assert "MODEL_PROVIDER" not in env and "VERTEX_LOCATION" not in env
    assert env["AGENT_MODEL"] == expanded("OPENAI_DEFAULT_MODEL") == "gpt-4o-mini"
    assert env["TRACE_EXPORT"] == "cloud_trace"  # spans to Cloud Trace once deployed
    # Issue 10 items 1 and 2: behind the front end, with the function's own URLs.
    region, name = expanded("REGION"), expanded("FUNCTION_NAME")
    assert env["AUTH_PLATFORM_VERIFIED"] == "true"
    assert env["AUTH_AUDIENCE"].split(",") == [
        f"https://{region}-{PROJECT}.cloudfunctions.net/{name}",
        f"https://{name}-123456789012.{region}.run.app",  # the fake project's number
    ]
    # The service starts with exactly this environment on the platform.
    Settings.from_env(env | {"K_SERVICE": name})


def test_updates_never_touch_the_services_iam_policy_and_check_it_is_private(
    scenario: Scenario,
) -> None:
    """Issue 10 item 8: `--no-allow-unauthenticated` on an existing function makes gcloud
    call run.services.setIamPolicy (googlecloudsdk command_lib/functions/v2/deploy/
    command.py), which the deployer does not have. Neither flag is passed; each deploy
    then reads the Cloud Run service's policy and fails if allUsers may invoke."""
    for run in (scenario.deploy, scenario.redeploy):
        argv = the_deploy(run)
        assert not any("allow-unauthenticated" in a for a in argv)
        assert "--quiet" in argv  # a new function: the prompt's default, private
        checks = [
            i for i, a in enumerate(run.argvs) if a[:3] == ["run", "services", "get-iam-policy"]
        ]
        assert run.argvs[checks[-1]][3] == expanded("FUNCTION_NAME")
        assert checks[-1] > run.argvs.index(argv)
        assert "is private" in run.output()
    # Issue 19 item 7: the update checks before the deploy too (the function exists then).
    before = scenario.redeploy.argvs.index(the_deploy(scenario.redeploy))
    assert [a[:3] for a in scenario.redeploy.argvs[:before] if a[0] == "run"] == [
        ["run", "services", "describe"],
        ["run", "services", "get-iam-policy"],
    ]


def test_a_public_function_fails_the_deploy(tmp_path: Path) -> None:
    import json

    fake = seed_secret(tmp_path)
    state = json.loads((fake / "state.json").read_text())
    state["run_policy"] = [["roles/run.invoker", "allUsers"]]
    (fake / "state.json").write_text(json.dumps(state))
    run = run_script("deploy.sh", fake, check=False)
    assert run.result.returncode != 0
    assert "is PUBLIC and its new revision already serves" in run.result.stderr
    assert "remove-iam-policy-binding agent --member=allUsers" in run.result.stderr


def public_project(fake: Path, **state_changes: object) -> Path:
    """A fake project whose function exists, behind a service named unlike it."""
    import json

    seed_secret(fake)
    state = json.loads((fake / "state.json").read_text())
    name = expanded("FUNCTION_NAME")
    state.update(functions=[name], function_services={name: "svc-behind"}, **state_changes)
    (fake / "state.json").write_text(json.dumps(state))
    return fake


@pytest.mark.parametrize(
    ("state", "fix"),
    [
        (
            {"run_policy": [["roles/run.invoker", "allAuthenticatedUsers"]]},
            "gcloud run services remove-iam-policy-binding svc-behind"
            " --member=allAuthenticatedUsers",
        ),
        (
            {
                "run_annotations": {
                    "svc-behind": {"run.googleapis.com/invoker-iam-disabled": "true"}
                }
            },
            "gcloud run services update svc-behind --invoker-iam-check",
        ),
    ],
    ids=["public-binding", "invoker-iam-check-off"],
)
def test_a_public_function_is_refused_before_anything_is_deployed(
    tmp_path: Path, state: dict[str, object], fix: str
) -> None:
    """Issue 19 item 7: the check reads the service the function names
    (serviceConfig.service), counts Cloud Run's invoker-IAM-check switch as public, and runs
    before traffic could move to new code."""
    run = run_script("deploy.sh", public_project(tmp_path, **state), check=False)
    assert run.result.returncode != 0
    assert "is PUBLIC; nothing was deployed" in run.result.stderr
    assert fix in run.result.stderr
    assert calls_of(run, "functions", "deploy") == []
    for argv in calls_of(run, "run", "services", "describe") + calls_of(
        run, "run", "services", "get-iam-policy"
    ):
        assert argv[3] == "svc-behind"


def test_a_private_function_behind_another_service_name_deploys(tmp_path: Path) -> None:
    run = run_script("deploy.sh", public_project(tmp_path))
    assert "service svc-behind checks the invoker's IAM" in run.result.stderr


def test_the_project_number_comes_from_cloud_build_or_is_looked_up(tmp_path: Path) -> None:
    fake = seed_secret(tmp_path)
    given = run_script("deploy.sh", fake, env={"PROJECT_NUMBER": "42"})
    assert calls_of(given, "projects", "describe") == []
    assert ".run.app" in env_of(flags_of(the_deploy(given)))["AUTH_AUDIENCE"]
    assert "https://agent-42." in env_of(flags_of(the_deploy(given)))["AUTH_AUDIENCE"]


def test_timeout_override_moves_flag_and_setting_together(tmp_path: Path) -> None:
    fake = seed_secret(tmp_path)
    argv = the_deploy(run_script("deploy.sh", fake, env={"FUNCTION_TIMEOUT_SECONDS": "900"}))
    assert flags_of(argv)["timeout"] == "900s"
    assert env_of(flags_of(argv))["FUNCTION_TIMEOUT_SECONDS"] == "900"
    assert deploy_problems(argv) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONCURRENCY": "8", "CPU": "0.5"}, "needs CPU of at least 1"),
        ({"MEMORY": "1GB"}, "use a size like"),
        ({"CPU": "one"}, "use a number of vCPUs"),
        ({"CPU": "1.5"}, "whole number"),
        ({"CPU": "4", "MEMORY": "1Gi"}, "outside 2048-16384 MiB"),
        ({"CPU": "1", "MEMORY": "8Gi"}, "outside 512-4096 MiB"),
        (
            {"MIN_INSTANCES": "5", "MAX_INSTANCES": "2"},
            "MIN_INSTANCES <= MAX_INSTANCES",
        ),
        ({"FUNCTION_TIMEOUT_SECONDS": "3601"}, "1-3600"),
        ({"RUNTIME": "python39"}, "python311"),
        ({"AGENT_MODEL": "a;b"}, "must not contain a semicolon"),
        ({"PROJECT_ID": ""}, "set PROJECT_ID"),
    ],
)
def test_deploy_refuses_inconsistent_settings(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    run = run_script("deploy.sh", tmp_path, env=env, check=False)
    assert run.result.returncode != 0
    assert message in run.result.stderr
    assert run.calls == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda a: [*a, "--no-allow-unauthenticated"], "fails on updates"),
        (lambda a: [*a, "--allow-unauthenticated"], "makes the function public"),
        (lambda a: [x for x in a if x != "--quiet"], "--quiet missing"),
        (
            lambda a: [re.sub(r"AUTH_PLATFORM_VERIFIED=true", "X=1", x) for x in a],
            "AUTH_PLATFORM_VERIFIED",
        ),
        (
            lambda a: [re.sub(r":1$", ":latest", x) for x in a],
            "must be pinned",
        ),
        (
            lambda a: [x for x in a if not x.startswith("--memory=")],
            "only accepted with --memory",
        ),
        (
            lambda a: [re.sub(r"^--cpu=.*", "--cpu=0.5", x) for x in a],
            "needs at least 1 vCPU",
        ),
        (
            lambda a: [re.sub(r"^--timeout=.*", "--timeout=60s", x) for x in a],
            "differs from FUNCTION_TIMEOUT",
        ),
        (
            lambda a: [re.sub(r"THREADS=\d+", "THREADS=1", x) for x in a],
            "differs from --concurrency",
        ),
        (lambda a: [re.sub(r"^--memory=.*", "--memory=8Gi", x) for x in a], "outside"),
        (
            lambda a: [re.sub(r"^--runtime=.*", "--runtime=python39", x) for x in a],
            "not a current Python",
        ),
    ],
)
def test_the_rules_catch_a_bad_deploy(
    scenario: Scenario, change: Callable[[list[str]], list[str]], problem: str
) -> None:
    bad = change(the_deploy(scenario.deploy))
    assert any(problem in p for p in deploy_problems(bad)), deploy_problems(bad)


def test_vertex_deploy_passes_every_rule_and_carries_no_secret(
    vertex_scenario: Scenario,
) -> None:
    for run in (vertex_scenario.deploy, vertex_scenario.redeploy):
        argv = the_deploy(run)
        assert deploy_problems(argv) == []
        assert not any(a.startswith("--set-secrets") for a in argv)
        assert "--clear-secrets" in argv
        # No secret version is looked up: there is no secret to pin.
        assert not [a for a in run.argvs if a[0] == "secrets"], run.argvs
        assert "is private" in run.output()


def test_vertex_deploy_env_is_what_the_service_starts_with(vertex_scenario: Scenario) -> None:
    from agent.base.settings import VERTEX_DEFAULT_MODEL, Settings

    env = env_of(flags_of(the_deploy(vertex_scenario.deploy)))
    assert env["MODEL_PROVIDER"] == "vertex"
    assert env["VERTEX_LOCATION"] == expanded("VERTEX_LOCATION") == "global"
    # AGENT_MODEL was not set: the Vertex AI default, from config.env.
    assert env["AGENT_MODEL"] == expanded("VERTEX_DEFAULT_MODEL") == VERTEX_DEFAULT_MODEL
    assert "OPENAI_API_KEY" not in env and "MODEL_API" not in env
    settings = Settings.from_env(env | {"K_SERVICE": expanded("FUNCTION_NAME")})
    assert settings.model_provider == "vertex"
    assert settings.vertex_location == "global"
    assert settings.agent_model == VERTEX_DEFAULT_MODEL
    assert settings.model_api == "chat_completions"
    assert settings.vertex_base_url == (
        f"https://aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/global"
        "/endpoints/openapi"
    )


def test_vertex_overrides_reach_the_service(tmp_path: Path) -> None:
    from agent.base.settings import Settings

    model = "google/gemini-2.5-pro"
    run = run_script(
        "deploy.sh",
        without_iam(tmp_path),
        env=VERTEX | {"VERTEX_LOCATION": "europe-west4", "AGENT_MODEL": model},
    )
    argv = the_deploy(run)
    env = env_of(flags_of(argv))
    assert (env["VERTEX_LOCATION"], env["AGENT_MODEL"]) == ("europe-west4", model)
    assert deploy_problems(argv) == []
    settings = Settings.from_env(env | {"K_SERVICE": expanded("FUNCTION_NAME")})
    assert settings.vertex_base_url.startswith(
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/"
    )


def test_switching_to_vertex_drops_the_functions_secret(tmp_path: Path) -> None:
    """gcloud keeps the current revision's secrets when no secrets flag is given: a function
    deployed with the key and then with Vertex AI must not keep OPENAI_API_KEY."""
    import json

    fake = seed_secret(tmp_path)
    name = expanded("FUNCTION_NAME")
    pinned = {name: f"OPENAI_API_KEY={expanded('SECRET_NAME')}:1"}

    def function_secrets() -> dict[str, str]:
        state: dict[str, dict[str, str]] = json.loads((fake / "state.json").read_text())
        return state["function_secrets"]

    run_script("deploy.sh", fake)
    assert function_secrets() == pinned
    run_script("deploy.sh", fake, env=VERTEX)
    assert function_secrets() == {}
    run_script("deploy.sh", fake)  # and back: the key again, pinned
    assert function_secrets() == pinned


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (VERTEX | {"MODEL_API": "responses"}, "Chat Completions only"),
        (VERTEX | {"VERTEX_LOCATION": "Europe West"}, "is not a location"),
        (VERTEX | {"VERTEX_LOCATION": "a;b"}, "is not a location"),
    ],
)
def test_vertex_deploy_refuses_what_the_service_would(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    run = run_script("deploy.sh", tmp_path, env=env, check=False)
    assert run.result.returncode != 0
    assert message in run.result.stderr
    assert run.calls == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda a: [*a, "--set-secrets=OPENAI_API_KEY=openai-api-key:1"], "no --set-secrets"),
        (lambda a: [x for x in a if x != "--clear-secrets"], "--clear-secrets missing"),
        (lambda a: [re.sub(r";VERTEX_LOCATION=[^;]*", "", x) for x in a], "VERTEX_LOCATION"),
    ],
)
def test_the_rules_catch_a_bad_vertex_deploy(
    vertex_scenario: Scenario, change: Callable[[list[str]], list[str]], problem: str
) -> None:
    bad = change(the_deploy(vertex_scenario.deploy))
    assert any(problem in p for p in deploy_problems(bad)), deploy_problems(bad)


def test_the_rules_catch_vertex_settings_on_the_default_provider(scenario: Scenario) -> None:
    bad = [
        a.replace("AUTH_PLATFORM_VERIFIED=true", "AUTH_PLATFORM_VERIFIED=true;VERTEX_LOCATION=x")
        for a in the_deploy(scenario.deploy)
    ]
    assert any("takes no MODEL_PROVIDER" in p for p in deploy_problems(bad))
