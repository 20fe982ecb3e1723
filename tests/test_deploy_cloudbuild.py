"""The pipeline: deploy/pipeline.sh submits cloudbuild.yaml as the deployer account with
every substitution it defines; cloudbuild.yaml validates against Cloud Build's schema, uses
exactly the substitutions it defines, whose defaults equal deploy/config.env, and runs the
tests (with the Firestore emulator required) before the deploy, with Cloud Logging and
timeouts that fit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy_scenarios import (
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
        pytest.skip("check-jsonschema is not installed (requirements-dev.in)")
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
