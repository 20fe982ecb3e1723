"""The deploy tests' harness: deploy/config.env read, the scripts run against the fake gcloud.

Nothing here reaches Google Cloud. The scripts run end to end against tests/fakes/gcloud, a
recording stand-in first on PATH that models a small project, so a second run sees what the
first created; each call it receives is logged with its argv (and, where it matters, what
reached its stdin and the lifecycle rules it was given). A pytest plugin, listed in
``pytest_plugins`` of tests/conftest.py: ``scenario`` (setup twice, deploy, pipeline on one
fake project) and ``partial_project`` are run once per test run and shared by the
tests/test_deploy_*.py modules, which only read them; ``vertex_scenario`` is the same
sequence with ``MODEL_PROVIDER=vertex`` (no key piped, none asked for); ``repo_on_path``
puts the repository first on ``sys.path`` for a module.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.constants import DEPLOY_PROJECT, REPO_ROOT

REPO = REPO_ROOT
PROJECT = DEPLOY_PROJECT
DEPLOY = REPO / "deploy"
FAKES = REPO / "tests" / "fakes"
SCRIPTS = ["common.sh", "setup.sh", "deploy.sh", "pipeline.sh", "build-test.sh"]
BUILD_CONFIGS = ["cloudbuild-test.yaml", "cloudbuild.yaml"]

EXPECTED_APIS = {
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "firestore.googleapis.com",
    "storage.googleapis.com",
    "secretmanager.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "telemetry.googleapis.com",
    "cloudtrace.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudtasks.googleapis.com",
}
# With MODEL_PROVIDER=vertex: Vertex AI instead of Secret Manager (there is no key).
VERTEX_APIS = EXPECTED_APIS - {"secretmanager.googleapis.com"} | {"aiplatform.googleapis.com"}
VERTEX = {"MODEL_PROVIDER": "vertex"}

# Verbs after which a call has changed the project.
MUTATING = (
    "create",
    "enable",
    "add-iam-policy-binding",
    "add",
    "update",
    "deploy",
    "submit",
    "set-cleanup-policies",
)


def load_config() -> dict[str, str]:
    """deploy/config.env as {NAME: default text}, unexpanded (``${PROJECT_ID}-x`` stays)."""
    config: dict[str, str] = {}
    for line in (DEPLOY / "config.env").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r'([A-Z][A-Z0-9_]*)="\$\{\1:-(.*)\}"', line.strip())
        assert match, f'config.env line is not NAME="${{NAME:-default}}": {line!r}'
        config[match.group(1)] = match.group(2)
    return config


CONFIG = load_config()


def expanded(name: str, project: str = PROJECT) -> str:
    value = CONFIG[name]
    for other in CONFIG:
        if other != name and f"${{{other}}}" in value:
            value = value.replace(f"${{{other}}}", expanded(other, project))
    return value.replace("${PROJECT_ID}", project)


OVERRIDES: dict[str, str] = {
    "REGION": "europe-west9",
    "FUNCTION_NAME": "fn-override",
    "RUNTIME": "python313",
    "ENTRY_POINT": "entry_override",
    "MEMORY": "2Gi",
    "CPU": "2",
    "CONCURRENCY": "17",
    "MIN_INSTANCES": "3",
    "MAX_INSTANCES": "23",
    "FUNCTION_TIMEOUT_SECONDS": "1234",
    "FIRESTORE_DATABASE": "db-override",
    "FIRESTORE_LOCATION": "eur3",
    "RESULTS_BUCKET": "bucket-override",
    "RESULTS_RETENTION_DAYS": "11",
    "BUILD_SOURCE_BUCKET": "source-override",
    "BUILD_SOURCE_RETENTION_DAYS": "13",
    "RUNTIME_SA_NAME": "rt-override",
    "DEPLOYER_SA_NAME": "dp-override",
    "BUILDER_SA_NAME": "bd-override",
    "SECRET_NAME": "secret-override",
    "MODEL_PROVIDER": "vertex",
    "VERTEX_LOCATION": "europe-west4",
    "OPENAI_DEFAULT_MODEL": "openai-default-override",
    "VERTEX_DEFAULT_MODEL": "vertex-default-override",
    "SESSION_TTL_SECONDS": "4321",
    "AGENT_MODEL": "model-override",
    "OPENAI_BASE_URL": "http://llm.example:8000/v1",
    "AGENT_FACTORY": "my_agent.agent:build",
    "MODEL_API": "chat_completions",
    "LOG_LEVEL": "DEBUG",
    "TRACE_EXPORT": "otlp",
    "SIGNED_URL_TTL_SECONDS": "777",
    "RESULT_INLINE_MAX_BYTES": "99999",
    "ARTIFACT_REPOSITORY": "repo-override",
    "ARTIFACT_RETENTION_DAYS": "41",
    "ARTIFACT_KEEP_VERSIONS": "43",
    "TESTER_SA_NAME": "ts-override",
    "SIGNER_ROLE_ID": "signerOverride",
    "DEPLOY_ROLE_ID": "deployOverride",
    "TEST_IMAGE": "python:3.12-slim@sha256:" + "1" * 64,
    "DEPLOY_IMAGE": "gcr.io/x/gcloud@sha256:" + "2" * 64,
    "EMULATOR_SDK_VERSION": "527.0.0-0",
    "STAGING_FUNCTION_NAME": "fn-staging-override",
    "STAGING_FIRESTORE_DATABASE": "db-staging-override",
    "STAGING_RESULTS_BUCKET": "bucket-staging-override",
    "STAGING_RUNTIME_SA_NAME": "rt-staging-override",
    "STAGING_MIN_INSTANCES": "2",
    "EVAL_MIN_PASS_RATE": "0.5",
    "STAGING_RUNS_QUEUE_NAME": "queue-staging-override",
    "STAGING_INVOKER_SA_NAME": "iv-staging-override",
    "RUNS_QUEUE_NAME": "queue-override",
    "INVOKER_SA_NAME": "iv-override",
    "RUNS_QUEUE_MAX_ATTEMPTS": "7",
    "RUNS_QUEUE_MIN_BACKOFF": "2s",
    "RUNS_QUEUE_MAX_BACKOFF": "33s",
    "RUNS_QUEUE_MAX_DOUBLINGS": "3",
    "RUNS_QUEUE_MAX_RETRY_DURATION": "1234s",
    "RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND": "4",
    "RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES": "6",
    "WEBHOOK_ALLOWED_HOSTS": "hooks.example.com ops.example.org",
    "WEBHOOK_SECRET_NAME": "whsecret-override",
}
"""A value other than the default for every knob of config.env."""


def sa_email(config_name: str, project: str = PROJECT) -> str:
    return f"{expanded(config_name, project)}@{project}.iam.gserviceaccount.com"


@dataclass
class Run:
    """One script run: how it ended, and the gcloud calls it made, as the fake recorded them."""

    result: subprocess.CompletedProcess[str]
    calls: list[dict[str, Any]]
    step_env: dict[str, str] | None = None
    """A simulated build step's environment (``run_builds``); None for a script run."""

    @property
    def argvs(self) -> list[list[str]]:
        return [list(call["argv"]) for call in self.calls]

    def output(self) -> str:
        return self.result.stdout + self.result.stderr


def read_calls(fake_dir: Path) -> list[dict[str, Any]]:
    log = fake_dir / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def run_script(
    script: str,
    fake_dir: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
    clean: bool = False,
) -> Run:
    """Run a deploy script against the fake gcloud. ``clean``: ``env`` is the whole
    environment (a build step's), not added to the defaults (PROJECT_ID among them)."""
    before = len(read_calls(fake_dir))
    if script == "pipeline.sh" and "FAKE_GCLOUD_FUNCTION_URL" not in (env or {}):
        # Its eval gate calls the staging function: here a local service with the demo model.
        from tests.support.eval_target import staging_url

        env = {"FAKE_GCLOUD_FUNCTION_URL": staging_url(), **(env or {})}
    full_env = {
        "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(fake_dir),
        "FAKE_GCLOUD_DIR": str(fake_dir),
        "PYTHON": sys.executable,
        "RETRY_DELAY_SECONDS": "0",
        "EVAL_REPORT_DIR": str(fake_dir / "eval"),
        **({} if clean else {"PROJECT_ID": PROJECT}),
        **(env or {}),
    }
    result = subprocess.run(
        ["bash", str(DEPLOY / script), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return Run(result, read_calls(fake_dir)[before:])


PROJECT_NUMBER = "123456789012"
"""The fake project's number (tests/fakes/gcloud answers it to ``projects describe``)."""


def substituted(text: str, values: dict[str, str]) -> str:
    """Cloud Build's substitution of ``$NAME`` and ``${NAME}`` in a build config value."""
    return re.sub(
        r"\$\{([A-Z_][A-Z0-9_]*)\}|\$([A-Z_][A-Z0-9_]*)",
        lambda m: values[m.group(1) or m.group(2)],
        text,
    )


def run_builds(pipeline: Run, fake_dir: Path, check: bool = True) -> list[Run]:
    """What Cloud Build does with the builds pipeline.sh submitted: each build's deploy
    step (cloudbuild.yaml's deploy/deploy.sh) runs with exactly the environment the
    build config gives it (the substitutions passed, else the config's defaults, under
    ``substitutionOption: MUST_MATCH``) and as the build's service account, against the
    same fake project. The test build's step (apt and the suite) is not run here."""
    runs = []
    for argv in pipeline.argvs:
        if command(argv) != ("builds", "submit"):
            continue
        flags = flags_of(argv)
        config = cloudbuild(flags["config"])
        passed = dict(item.split("=", 1) for item in flags["substitutions"].split(",") if item)
        unknown = set(passed) - set(config["substitutions"])
        assert not unknown, f"MUST_MATCH: {flags['config']} does not define {unknown}"
        values = {"PROJECT_ID": flags["project"], "PROJECT_NUMBER": PROJECT_NUMBER}
        for key, default in config["substitutions"].items():
            values[key] = passed.get(key, substituted(str(default), values))
        account = flags["service-account"].rsplit("/", 1)[-1]
        for step in config["steps"]:
            if step.get("args") != ["deploy/deploy.sh"]:
                continue
            env = dict(item.split("=", 1) for item in (substituted(e, values) for e in step["env"]))
            run = run_script(
                "deploy.sh",
                fake_dir,
                env={"FAKE_GCLOUD_ACCOUNT": f"serviceAccount:{account}", **env},
                clean=True,
                check=check,
            )
            run.step_env = env
            runs.append(run)
    return runs


def without_iam(fake_dir: Path) -> Path:
    """A fake project that setup did not make: no account holds a role there, so the IAM
    model is off (the scenarios, which run setup first, check IAM)."""
    fake_dir.mkdir(parents=True, exist_ok=True)
    state = fake_dir / "state.json"
    current = json.loads(state.read_text()) if state.exists() else {}
    current["iam_checks"] = False
    state.write_text(json.dumps(current))
    return fake_dir


def seed_secret(fake_dir: Path) -> Path:
    """A fake project whose model-key secret has a version (what setup leaves), so that
    deploy.sh can pin it."""
    fake_dir.mkdir(parents=True, exist_ok=True)
    state = fake_dir / "state.json"
    current = json.loads(state.read_text()) if state.exists() else {}
    current.setdefault("secrets", {})[expanded("SECRET_NAME")] = {
        "versions": [{"sha256": "0" * 64, "length": 1}]
    }
    # The webhook signing secret too, for a deploy with WEBHOOK_ALLOWED_HOSTS set.
    current["secrets"][expanded("WEBHOOK_SECRET_NAME")] = {
        "versions": [{"sha256": "1" * 64, "length": 1}]
    }
    # Setup did not run here, so no account holds a role: IAM is not modelled (the
    # scenarios, which run setup first, check it).
    current["iam_checks"] = False
    state.write_text(json.dumps(current))
    return fake_dir


KNOWN_COMMANDS = [
    tuple(line.split())
    for line in """
    services list | services enable
    firestore databases describe | firestore databases create
    firestore fields ttls list | firestore fields ttls update
    iam service-accounts describe | iam service-accounts create
    iam service-accounts get-iam-policy | iam service-accounts add-iam-policy-binding
    projects get-iam-policy | projects add-iam-policy-binding
    storage buckets describe | storage buckets create | storage buckets update
    storage buckets get-iam-policy | storage buckets add-iam-policy-binding
    secrets describe | secrets create | secrets get-iam-policy | secrets add-iam-policy-binding
    secrets versions list | secrets versions add
    functions deploy | builds submit | functions describe | builds describe | builds log
    auth print-identity-token
    functions get-iam-policy | functions add-iam-policy-binding
    artifacts repositories describe | artifacts repositories create
    artifacts repositories set-cleanup-policies
    artifacts repositories get-iam-policy | artifacts repositories add-iam-policy-binding
    iam roles describe | iam roles create | iam roles update
    firestore indexes fields list | firestore indexes fields update
    projects describe | run services get-iam-policy | run services describe
    run services add-iam-policy-binding
    tasks queues describe | tasks queues create | tasks queues update
    tasks queues get-iam-policy | tasks queues add-iam-policy-binding
    """.replace("\n", "|").split("|")
    if line.strip()
]


def command(argv: list[str]) -> tuple[str, ...]:
    """The command words of a call, e.g. ('storage', 'buckets', 'create'); a call on the
    beta track is named like its GA command."""
    argv = argv[1:] if argv[:1] == ["beta"] else argv
    matches = [c for c in KNOWN_COMMANDS if tuple(argv[: len(c)]) == c]
    if matches:
        return max(matches, key=len)
    return tuple(a for a in argv if not a.startswith("-"))[:3]


def flags_of(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            out[name] = value if eq else ""
    return out


def is_mutating(argv: list[str]) -> bool:
    return command(argv)[-1:] != () and command(argv)[-1] in MUTATING


def calls_of(run: Run, *words: str) -> list[list[str]]:
    return [argv for argv in run.argvs if command(argv) == words]


def normalized(argv: list[str]) -> list[str]:
    return [
        re.sub(
            r"^--policy=.*/cleanup-",
            "--policy=<tmp>/cleanup-",
            re.sub(r"^--lifecycle-file=.*/lifecycle-", "--lifecycle-file=<tmp>/lifecycle-", a),
        )
        for a in argv
    ]


def cloudbuild(name: str = "cloudbuild.yaml") -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / name).read_text())
    return config


def env_of(flags: dict[str, str]) -> dict[str, str]:
    """--set-env-vars as a dict; understands gcloud's "^;^A=1;B=x,y" delimiter syntax."""
    text = flags.get("set-env-vars", "")
    delimiter = ","
    if match := re.match(r"\^(.)\^", text):
        delimiter, text = match.group(1), text[match.end() :]
    return dict(item.split("=", 1) for item in text.split(delimiter) if item)


@dataclass
class Scenario:
    """One fake project taken through what an operator does, all with one environment
    (``env``: empty for the default provider, ``VERTEX`` for Vertex AI): setup, setup
    again (no key piped), the pipeline (its deploy build creates the function, as the
    deployer account), setup again after that deploy, and the pipeline once more (its
    deploy build updates the function). ``deploy`` and ``redeploy`` are the two deploy
    builds' runs of deploy/deploy.sh, in Cloud Build's environment and identity."""

    fake_dir: Path
    secret: str
    setup: Run
    state_after_setup: str
    second: Run
    state_after_second: str
    pipeline: Run
    deploy: Run
    after_deploy: Run
    pipeline2: Run
    redeploy: Run
    env: dict[str, str]
    staging_setup: Run
    """``setup.sh --staging``, after the second setup: the staging function's own database,
    bucket and runtime account."""
    staging: Run
    """The first pipeline's staging deploy build (the production one is ``deploy``)."""

    def runs(self) -> list[Run]:
        return [
            self.setup,
            self.second,
            self.staging_setup,
            self.pipeline,
            self.staging,
            self.deploy,
            self.after_deploy,
            self.pipeline2,
            self.redeploy,
        ]

    def all_argvs(self) -> list[list[str]]:
        return [argv for run in self.runs() for argv in run.argvs]

    def all_calls(self) -> list[dict[str, Any]]:
        return [call for run in self.runs() for call in run.calls]


def pipeline_and_deploy(fake_dir: Path, env: dict[str, str]) -> tuple[Run, Run, Run]:
    """pipeline.sh as the operator, then its deploy builds (staging, then production) as
    Cloud Build runs them, then what pipeline.sh does once each passed (``grant_invoker``,
    deploy/common.sh): (pipeline, staging deploy, production deploy). The fake's ``builds
    submit`` runs no build, so pipeline.sh's own calls of it came before the deploys here
    (on a first deploy they find no function yet); the pipeline's calls include both."""
    pipeline = run_script("pipeline.sh", fake_dir, env=env)
    staging, deploy = run_builds(pipeline, fake_dir, check=False)
    for build, staged in ((staging, "1"), (deploy, "0")):
        if build.result.returncode == 0:
            after = run_shell(
                'source "$1"; load_config; grant_invoker',
                fake_dir,
                DEPLOY / "common.sh",
                env=env | {"STAGING": staged},
            )
            pipeline = Run(pipeline.result, pipeline.calls + after.calls)
    return pipeline, staging, deploy


def run_shell(code: str, fake_dir: Path, *args: object, env: dict[str, str]) -> Run:
    """``bash -c code`` with the scripts' environment (as ``run_script``), for one
    function of deploy/common.sh."""
    before = len(read_calls(fake_dir))
    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail; " + code, "bash", *map(str, args)],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(fake_dir),
            "FAKE_GCLOUD_DIR": str(fake_dir),
            "RETRY_DELAY_SECONDS": "0",
            "PROJECT_ID": PROJECT,
            **env,
        },
        timeout=120,
    )
    assert result.returncode == 0, f"{code} failed:\n{result.stdout}\n{result.stderr}"
    return Run(result, read_calls(fake_dir)[before:])


def take_through(fake_dir: Path, secret: str, env: dict[str, str]) -> Scenario:
    """Setup (``secret`` piped in; empty: nothing), setup again, pipeline (create),
    setup after that deploy, pipeline (update): each with ``env`` on top of the defaults."""
    setup = run_script("setup.sh", fake_dir, stdin=secret + "\n" if secret else "", env=env)
    state_after_setup = (fake_dir / "state.json").read_text()
    second = run_script("setup.sh", fake_dir, stdin="", env=env)
    state_after_second = (fake_dir / "state.json").read_text()
    staging_setup = run_script("setup.sh", fake_dir, "--staging", stdin="", env=env)
    pipeline, staging, deploy = pipeline_and_deploy(fake_dir, env)
    after_deploy = run_script("setup.sh", fake_dir, stdin="", env=env)
    pipeline2, _, redeploy = pipeline_and_deploy(fake_dir, env)
    return Scenario(
        fake_dir,
        secret,
        setup,
        state_after_setup,
        second,
        state_after_second,
        pipeline,
        deploy,
        after_deploy,
        pipeline2,
        redeploy,
        env,
        staging_setup,
        staging,
    )


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    fake_dir = tmp_path_factory.mktemp("fake-gcloud")
    return take_through(fake_dir, "sk-test-" + secrets.token_hex(16), {})


@pytest.fixture(scope="session")
def vertex_scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """The same sequence with MODEL_PROVIDER=vertex, and no key piped in anywhere."""
    return take_through(tmp_path_factory.mktemp("fake-gcloud-vertex"), "", dict(VERTEX))


@pytest.fixture(scope="session")
def partial_project(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One setup run against a project that is partly there already, with a retention
    override, one IAM call failing the way a just-created account does, one TTL and one
    index-field update drawing a 409, and a new database that takes a while to exist."""
    fake_dir = tmp_path_factory.mktemp("partial")
    results = "gs://" + expanded("RESULTS_BUCKET")
    (fake_dir / "state.json").write_text(
        json.dumps(
            {
                "services": sorted(EXPECTED_APIS - {"run.googleapis.com"}),
                "buckets": {results: {"location": "us-east1", "pap": False}},
            }
        )
    )
    env = {
        "RESULTS_RETENTION_DAYS": "3",
        # IAM propagation, and the Firestore Admin API's 409s on a burst of field updates
        "FAKE_GCLOUD_FAIL_ONCE": "add-iam-policy-binding,--enable-ttl,--disable-indexes",
        # CreateDatabase returns before the database exists
        "FAKE_GCLOUD_DB_READY_AFTER": "2",
    }
    return run_script("setup.sh", fake_dir, stdin="key", env=env)


@pytest.fixture(scope="module")
def repo_on_path() -> Iterator[None]:
    """The repository first on ``sys.path`` while a module runs (the deploy modules use it)."""
    sys.path.insert(0, str(REPO))
    yield
    sys.path.remove(str(REPO))
