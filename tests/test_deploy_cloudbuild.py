"""The pipeline: deploy/pipeline.sh uploads the last commit and submits cloudbuild-test.yaml
as the tester account, then cloudbuild.yaml as the deployer account, each with every
substitution it defines; both validate against Cloud Build's schema, use exactly the
substitutions they define, whose defaults equal deploy/config.env, run their images pinned
by digest, and log to Cloud Logging with timeouts that fit. The test build requires the
Firestore emulator of the pinned SDK release.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    BUILD_CONFIGS,
    CONFIG,
    DEPLOY,
    PROJECT,
    REPO,
    Scenario,
    calls_of,
    cloudbuild,
    expanded,
    flags_of,
    sa_email,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


def test_pipeline_tests_as_the_tester_then_deploys_as_the_deployer(
    scenario: Scenario,
) -> None:
    """Issue 10 item 7: no package code runs with deploy rights. The test build runs as an
    account with no role that changes anything; the deploy build, after it, as the deployer,
    on its own upload of the same commit."""
    tests, staging, deploy = calls_of(scenario.pipeline, "builds", "submit")
    for argv, config, account in (
        (tests, "cloudbuild-test.yaml", "TESTER_SA_NAME"),
        (staging, "cloudbuild.yaml", "DEPLOYER_SA_NAME"),
        (deploy, "cloudbuild.yaml", "DEPLOYER_SA_NAME"),
    ):
        flags = flags_of(argv)
        assert flags["config"] == config
        assert flags["service-account"] == (
            f"projects/{PROJECT}/serviceAccounts/{sa_email(account)}"
        )
        assert flags["gcs-source-staging-dir"] == f"gs://{expanded('BUILD_SOURCE_BUCKET')}/source"
        if argv is not deploy:  # production deploys staging's upload (test_deploy_staging.py)
            assert flags["ignore-file"] == "deploy/build.gcloudignore"
            assert argv[:4] == ["beta", "builds", "submit", "."]
        passed = dict(item.split("=", 1) for item in flags["substitutions"].split(","))
        defined = cloudbuild(config)["substitutions"]
        assert set(passed) == set(defined)
        for key, value in passed.items():
            staged = f"STAGING_{key[1:]}" if argv is staging else key[1:]
            assert value == expanded(staged if staged in CONFIG else key[1:]), key
    # The tester holds nothing but its log and a read of the uploaded source.
    from tests.test_deploy_iam import expected_bindings

    tester = "serviceAccount:" + sa_email("TESTER_SA_NAME")
    roles = {(b[0], b[3]) for b in expected_bindings() if b[2] == tester}
    assert roles == {
        ("projects", "roles/logging.logWriter"),
        ("buckets", "roles/storage.objectViewer"),
    }


def test_the_builds_get_the_commit_not_the_working_tree(scenario: Scenario) -> None:
    text = (DEPLOY / "pipeline.sh").read_text()
    assert 'git -C "$REPO_ROOT" archive --format=tar "$commit"' in text
    assert 'cd "$source_dir"' in text
    assert "commit " in scenario.pipeline.output()


@pytest.mark.parametrize("config", BUILD_CONFIGS)
def test_cloudbuild_validates_against_the_cloud_build_schema(config: str) -> None:
    tool = Path(sys.executable).with_name("check-jsonschema")
    if not tool.exists():
        pytest.skip("check-jsonschema is not installed (requirements-dev.in)")
    result = subprocess.run(
        [
            str(tool),
            "--builtin-schema",
            "vendor.cloudbuild",
            str(REPO / config),
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


@pytest.mark.parametrize("name", BUILD_CONFIGS)
def test_cloudbuild_substitutions_defined_used_and_equal_to_config(name: str) -> None:
    config = cloudbuild(name)
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


def test_each_build_has_one_step_with_logs_and_timeouts() -> None:
    test_build, deploy_build = cloudbuild("cloudbuild-test.yaml"), cloudbuild("cloudbuild.yaml")
    (test_step,) = test_build["steps"]
    (deploy_step,) = deploy_build["steps"]
    assert test_step["args"] == ["deploy/build-test.sh"]
    assert deploy_step["args"] == ["deploy/deploy.sh"]
    assert "3.12" in expanded("TEST_IMAGE")
    for config, step in ((test_build, test_step), (deploy_build, deploy_step)):
        assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"
        assert int(str(config["timeout"]).rstrip("s")) > int(str(step["timeout"]).rstrip("s"))
    # The deploy step's environment names exactly the config keys it overrides, and the
    # project number Cloud Build knows (the function's run.app URL is built from it).
    env_names = {item.split("=", 1)[0] for item in deploy_step["env"]}
    overridden = {key[1:] for key in deploy_build["substitutions"]} - {"DEPLOY_IMAGE"}
    assert env_names == {"PROJECT_ID", "PROJECT_NUMBER"} | overridden
    assert "PROJECT_NUMBER=$PROJECT_NUMBER" in deploy_step["env"]


DIGEST = re.compile(r"^[a-z0-9.-]+(/[a-z0-9._-]+)*(:[A-Za-z0-9._-]+)?@sha256:[0-9a-f]{64}$")


def test_build_images_are_pinned_by_digest() -> None:
    """Issue 10 item 7: a tag can be moved to other code; a digest cannot."""
    assert cloudbuild("cloudbuild-test.yaml")["steps"][0]["name"] == "${_TEST_IMAGE}"
    assert cloudbuild("cloudbuild.yaml")["steps"][0]["name"] == "${_DEPLOY_IMAGE}"
    for name in ("TEST_IMAGE", "DEPLOY_IMAGE"):
        assert DIGEST.match(expanded(name)), f"{name}={expanded(name)} is not pinned by digest"
    assert not DIGEST.match("python:3.12-slim-bookworm")
    notes = (DEPLOY / "config.env").read_text()
    assert "To update" in notes and "imagetools inspect" in notes


def test_build_test_step_requires_the_pinned_firestore_emulator() -> None:
    text = (DEPLOY / "build-test.sh").read_text()
    assert "REQUIRE_FIRESTORE_EMULATOR=1 make test" in text
    assert (
        "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
        in text
    )
    # Issue 10 item 8: since SDK 529 the emulator needs Java 21; the image's Java is 17.
    assert '"google-cloud-cli-firestore-emulator=$EMULATOR_SDK_VERSION"' in text
    assert '"google-cloud-cli=$EMULATOR_SDK_VERSION"' in text
    assert expanded("EMULATOR_SDK_VERSION") == "528.0.0-0"
    assert "bookworm" in expanded("TEST_IMAGE")  # Debian 12: OpenJDK 17
    step = cloudbuild("cloudbuild-test.yaml")["steps"][0]
    assert step["env"] == ["EMULATOR_SDK_VERSION=${_EMULATOR_SDK_VERSION}"]


def test_the_model_provider_reaches_the_deploy_step(vertex_scenario: Scenario) -> None:
    """MODEL_PROVIDER and VERTEX_LOCATION travel pipeline.sh -> substitutions -> the deploy
    step's environment, where deploy.sh reads them; the defaults keep OpenAI with the key."""
    config = cloudbuild("cloudbuild.yaml")
    (step,) = config["steps"]
    assert "MODEL_PROVIDER=${_MODEL_PROVIDER}" in step["env"]
    assert "VERTEX_LOCATION=${_VERTEX_LOCATION}" in step["env"]
    assert config["substitutions"]["_MODEL_PROVIDER"] == "openai"
    assert config["substitutions"]["_VERTEX_LOCATION"] == "global"
    _, _, deploy = calls_of(vertex_scenario.pipeline, "builds", "submit")
    passed = dict(item.split("=", 1) for item in flags_of(deploy)["substitutions"].split(","))
    assert passed["_MODEL_PROVIDER"] == "vertex"
    assert passed["_VERTEX_LOCATION"] == expanded("VERTEX_LOCATION")


def test_each_build_log_is_streamed_and_its_outcome_read(scenario: Scenario) -> None:
    """Issue 19 item 5: the builds log to Cloud Logging only, which GA `builds submit` does
    not stream. Each build is submitted without waiting, its log streamed (beta builds log
    --stream reads Cloud Logging) and its status read; the log URL is printed."""
    argvs = scenario.pipeline.argvs
    logs = [a for a in argvs if a[:3] == ["beta", "builds", "log"]]
    assert [a[3] for a in logs] == ["build-1", "build-2", "build-3"]
    assert all("--stream" in a for a in logs)
    for argv in calls_of(scenario.pipeline, "builds", "submit"):
        assert "--async" in argv and "--format=value(id)" in argv
    out = scenario.pipeline.output()
    assert "log at https://console.cloud.google.com/cloud-build/builds/build-1" in out
    assert "(fake) log of build-1: cloudbuild-test.yaml" in out


def test_a_failing_test_build_names_its_step_and_log_and_stops_the_deploy(
    tmp_path: Path,
) -> None:
    import json

    from tests.support.deploy_scenarios import run_script

    (tmp_path / "state.json").write_text(
        json.dumps({"iam_checks": False, "failing_builds": {"cloudbuild-test.yaml": "test"}})
    )
    run = run_script("pipeline.sh", tmp_path, check=False)
    assert run.result.returncode != 0
    err = run.result.stderr
    assert "cloudbuild-test.yaml: build build-1 ended FAILURE; failing step: test (FAILURE)" in err
    assert "log: https://console.cloud.google.com/cloud-build/builds/build-1" in err
    configs = [flags_of(a)["config"] for a in calls_of(run, "builds", "submit")]
    assert configs == ["cloudbuild-test.yaml"], "no deploy build after a failed test build"
