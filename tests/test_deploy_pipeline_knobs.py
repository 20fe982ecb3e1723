"""Issue 19 item 2: no override is dropped on its way to the deploy. Every knob of
deploy/config.env is accounted for in deploy/pipeline.sh: it reaches the deploy build's
step environment (where deploy/deploy.sh reads it), the test build, pipeline.sh's own
flags, or is a setup-only knob that shapes nothing a deploy does. A knob in none of these
is refused before anything is submitted. The pipeline's deploy build is simulated as Cloud
Build runs it (tests/support/deploy_scenarios.py ``run_builds``): the substitutions passed,
MUST_MATCH, and the step's env, so a knob pipeline.sh passes but the build file drops
fails here too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    CONFIG,
    DEPLOY,
    OVERRIDES,
    Run,
    calls_of,
    env_of,
    expanded,
    flags_of,
    run_builds,
    run_script,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")

# What the deploy hands the service, by knob: the deploy call must carry the override.
SERVICE_ENV = {
    "FIRESTORE_DATABASE",
    "SESSION_TTL_SECONDS",
    "AGENT_MODEL",
    "OPENAI_BASE_URL",
    "MODEL_API",
    "LOG_LEVEL",
    "TRACE_EXPORT",
    "SIGNED_URL_TTL_SECONDS",
    "RESULT_INLINE_MAX_BYTES",
    "RESULTS_BUCKET",
}


def knob_lists() -> dict[str, list[str]]:
    """pipeline.sh's knob lists, as it declares them."""
    text = (DEPLOY / "pipeline.sh").read_text()
    lists = {}
    for name in ("deploy_knobs", "test_knobs", "staging_knobs", "pipeline_knobs", "setup_knobs"):
        match = re.search(rf"^{name}=\(([^)]*)\)", text, re.M)
        assert match, f"pipeline.sh lost its {name} list"
        lists[name] = match.group(1).split()
    return lists


def pipeline_with(fake: Path, env: dict[str, str]) -> tuple[Run, Run, Run]:
    """The pipeline and its deploy builds (staging, production) on a fake project whose
    model-key secret (under the overriding name, if any) has a version."""
    state = {
        "iam_checks": False,
        "secrets": {
            env.get(name, expanded(name)): {"versions": [{}]}
            for name in ("SECRET_NAME", "WEBHOOK_SECRET_NAME")
        },
    }
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "state.json").write_text(json.dumps(state))
    pipeline = run_script("pipeline.sh", fake, env=env)
    staging, deploy = run_builds(pipeline, fake)
    return pipeline, staging, deploy


def test_every_knob_is_in_exactly_one_list() -> None:
    lists = knob_lists()
    named = [knob for names in lists.values() for knob in names]
    assert len(named) == len(set(named)), "a knob is listed twice"
    assert set(named) == set(CONFIG), (
        f"not accounted for: {set(CONFIG) - set(named)}; unknown: {set(named) - set(CONFIG)}"
    )
    assert set(OVERRIDES) == set(CONFIG), "keep OVERRIDES in step with config.env"


@pytest.mark.parametrize("provider", ["vertex", "openai"])
def test_every_override_reaches_where_it_takes_effect(tmp_path: Path, provider: str) -> None:
    env = OVERRIDES | {"MODEL_PROVIDER": provider}
    pipeline, staging, deploy = pipeline_with(tmp_path, env)
    tests_submit, _, deploy_submit = calls_of(pipeline, "builds", "submit")
    lists = knob_lists()
    step_env = deploy.step_env
    assert step_env is not None
    (deploy_call,) = calls_of(deploy, "functions", "deploy")
    flags = flags_of(deploy_call)
    service_env = env_of(flags)
    for knob in lists["deploy_knobs"]:
        if knob == "DEPLOY_IMAGE":
            assert f"_DEPLOY_IMAGE={env[knob]}" in flags_of(deploy_submit)["substitutions"]
            continue
        # In the deploy step's environment, as the build file passes it on.
        assert step_env.get(knob) == env[knob], knob
    for knob in SERVICE_ENV:
        assert service_env[knob] == env[knob], knob
    assert flags["runtime"] == env["RUNTIME"] and flags["entry-point"] == env["ENTRY_POINT"]
    assert flags["region"] == env["REGION"] and deploy_call[2] == env["FUNCTION_NAME"]
    for knob in lists["test_knobs"]:
        assert f"_{knob}={env[knob]}" in flags_of(tests_submit)["substitutions"], knob
    assert flags_of(deploy_submit)["gcs-source-staging-dir"].startswith("gs://source-override/")
    assert "dp-override@" in flags_of(deploy_submit)["service-account"]
    assert "ts-override@" in flags_of(tests_submit)["service-account"]
    # Staging: its own names in its deploy build (common.sh use_staging), and the gate's bar.
    (staged,) = calls_of(staging, "functions", "deploy")
    staged_flags = flags_of(staged)
    assert staged[2] == env["STAGING_FUNCTION_NAME"]
    assert env_of(staged_flags)["FIRESTORE_DATABASE"] == env["STAGING_FIRESTORE_DATABASE"]
    assert env_of(staged_flags)["RESULTS_BUCKET"] == env["STAGING_RESULTS_BUCKET"]
    assert staged_flags["service-account"].startswith(env["STAGING_RUNTIME_SA_NAME"] + "@")
    assert staged_flags["min-instances"] == env["STAGING_MIN_INSTANCES"]
    assert set(lists["staging_knobs"]) == {k for k in CONFIG if k.startswith("STAGING_")}
    assert "eval gate PASSED: pass rate 100% (minimum 50%)" in pipeline.output()
    setup_text = (DEPLOY / "setup.sh").read_text() + (DEPLOY / "config.env").read_text()
    deploy_text = (DEPLOY / "deploy.sh").read_text()
    for knob in lists["setup_knobs"]:
        assert f"${knob}" in setup_text or f"${{{knob}}}" in setup_text, knob
        assert knob not in deploy_text, f"{knob} is read by the deploy: it must reach it"


def test_the_model_defaults_reach_the_deploy_when_agent_model_is_empty(tmp_path: Path) -> None:
    env = {"OPENAI_DEFAULT_MODEL": "openai-default-override"}
    _, _, deploy = pipeline_with(tmp_path, env)
    (deploy_call,) = calls_of(deploy, "functions", "deploy")
    assert env_of(flags_of(deploy_call))["AGENT_MODEL"] == "openai-default-override"


def test_a_knob_the_pipeline_does_not_carry_is_refused_before_any_call(tmp_path: Path) -> None:
    copy = tmp_path / "repo" / "deploy"
    shutil.copytree(DEPLOY, copy)
    with (copy / "config.env").open("a") as config:
        config.write('NEW_KNOB="${NEW_KNOB:-x}"\n')
    fake = tmp_path / "fake"
    fake.mkdir()
    result = subprocess.run(
        ["bash", str(copy / "pipeline.sh")],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{DEPLOY.parent / 'tests' / 'fakes'}:/usr/bin:/bin",
            "FAKE_GCLOUD_DIR": str(fake),
            "PROJECT_ID": "test-proj-42",
        },
        timeout=60,
    )
    assert result.returncode != 0
    assert "sets NEW_KNOB, which deploy/pipeline.sh does not carry" in result.stderr
    assert not (fake / "calls.jsonl").exists()


def test_a_value_the_substitutions_cannot_carry_is_refused(tmp_path: Path) -> None:
    run = run_script("pipeline.sh", tmp_path, env={"AGENT_MODEL": "a,b"}, check=False)
    assert run.result.returncode != 0
    assert "must not contain a comma" in run.result.stderr
    assert run.calls == []
