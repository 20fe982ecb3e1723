"""deploy/config.env is the one home of the deploy's settings: every value in it can be
overridden from the environment and reaches a command, no script (nor cloudbuild.yaml
outside its substitutions) repeats a default, and every gcloud call names the project
explicitly instead of relying on the caller's gcloud configuration.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.deploy_scenarios import (
    BUILD_CONFIGS,
    CONFIG,
    DEPLOY,
    OVERRIDES,
    PROJECT,
    SCRIPTS,
    Scenario,
    cloudbuild,
    run_script,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


def test_every_call_names_the_project_explicitly(
    scenario: Scenario, vertex_scenario: Scenario
) -> None:
    for argv in scenario.all_argvs() + vertex_scenario.all_argvs():
        assert f"--project={PROJECT}" in argv, argv


def test_every_config_value_can_be_overridden_from_the_environment(
    tmp_path: Path,
) -> None:
    overrides = OVERRIDES
    assert set(overrides) == set(CONFIG), "keep this list in step with config.env"
    # Some values are read by one provider only, and the providers' default models only
    # while AGENT_MODEL is empty: each script runs once per provider, and the deploy once
    # more per provider without AGENT_MODEL.
    out = ""
    default_provider = overrides | {"MODEL_PROVIDER": CONFIG["MODEL_PROVIDER"]}
    for env in (overrides, default_provider):
        for script in ("setup.sh", "deploy.sh", "pipeline.sh"):
            out += run_script(script, tmp_path, "--dry-run", env=env).output()
        without_model = {k: v for k, v in env.items() if k != "AGENT_MODEL"}
        out += run_script("deploy.sh", tmp_path, "--dry-run", env=without_model).output()
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
        "ARTIFACT_RETENTION_DAYS": '"olderThan": "41d"',
        "ARTIFACT_KEEP_VERSIONS": '"keepCount": 43',
        "SESSION_TTL_SECONDS": "SESSION_TTL_SECONDS=4321",
        "TRACE_EXPORT": "TRACE_EXPORT=otlp",
        "SIGNED_URL_TTL_SECONDS": "SIGNED_URL_TTL_SECONDS=777",
        "RESULT_INLINE_MAX_BYTES": "RESULT_INLINE_MAX_BYTES=99999",
        "EMULATOR_SDK_VERSION": "_EMULATOR_SDK_VERSION=527.0.0-0",
        "MODEL_PROVIDER": "MODEL_PROVIDER=vertex",
        "VERTEX_LOCATION": "VERTEX_LOCATION=europe-west4",
        "OPENAI_DEFAULT_MODEL": "AGENT_MODEL=openai-default-override",
        "VERTEX_DEFAULT_MODEL": "AGENT_MODEL=vertex-default-override",
        "RUNS_QUEUE_MAX_ATTEMPTS": "--max-attempts=7",
        "RUNS_QUEUE_MIN_BACKOFF": "--min-backoff=2s",
        "RUNS_QUEUE_MAX_DOUBLINGS": "--max-doublings=3",
        "RUNS_QUEUE_MAX_DISPATCHES_PER_SECOND": "--max-dispatches-per-second=4",
        "RUNS_QUEUE_MAX_CONCURRENT_DISPATCHES": "--max-concurrent-dispatches=6",
        "WEBHOOK_ALLOWED_HOSTS": "WEBHOOK_ALLOWED_HOSTS=hooks.example.com\\,ops.example.org",
        "WEBHOOK_SECRET_NAME": "WEBHOOK_SIGNING_SECRET=whsecret-override:",
    }
    for name, text in expected.items():
        assert text in out, f"override of {name} ({text}) did not reach any command"


def test_model_defaults_equal_the_services() -> None:
    """Whichever provider the deploy picks, it hands the service the model and location the
    service itself would default to."""
    from agent.base.settings import VERTEX_DEFAULT_MODEL, Settings

    assert CONFIG["MODEL_PROVIDER"] == Settings.model_provider == "openai"
    assert CONFIG["OPENAI_DEFAULT_MODEL"] == Settings.agent_model
    assert CONFIG["VERTEX_DEFAULT_MODEL"] == VERTEX_DEFAULT_MODEL
    assert CONFIG["VERTEX_LOCATION"] == Settings.vertex_location == "global"
    assert CONFIG["AGENT_MODEL"] == "", "empty: the provider's default model"


# Defaults that are also one of the values a script names on purpose: MODEL_PROVIDER's
# default is one of the two providers common.sh accepts.
NAMED_CHOICES = {"MODEL_PROVIDER"}


def test_defaults_live_only_in_config_env() -> None:
    """A default repeated in a script would drift from config.env; only cloudbuild.yaml's
    substitution block (checked equal above) may repeat them."""
    texts = {name: (DEPLOY / name).read_text() for name in SCRIPTS}
    for build in BUILD_CONFIGS:
        config = cloudbuild(build)
        texts[build] = yaml.safe_dump({k: v for k, v in config.items() if k != "substitutions"})
    for name, value in CONFIG.items():
        for where, text in texts.items():
            own = re.search(rf"\$\{{{name}:-[^$}}]", text)
            assert not own, f"{where} gives {name} a default of its own"
        if len(value) < 4 or value.isdigit() or "$" in value or value == "(default)":
            continue
        if name in NAMED_CHOICES:
            continue
        token = re.compile(rf"(?<![\w.-]){re.escape(value)}(?![\w-])")
        for where, text in texts.items():
            code = "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#")
            )
            assert not token.search(code), f"default of {name} ({value}) repeated in {where}"
