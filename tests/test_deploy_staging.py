"""Issue 23: the pipeline's order is tests, a deploy to a staging function, the eval gate
against it, and production only if the gate passed, from the same commit and the same
upload. Staging shares nothing mutable with production.

The pipeline runs against the recording fake gcloud and the permission model
(tests/support/deploy_scenarios.py); its deploy builds run as Cloud Build would run them.
The gate is real: ``python -m evals`` against a local service standing in for the staging
function (tests/support/eval_target.py), whose URL the fake's ``functions describe`` gives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.deploy_scenarios import (
    Run,
    Scenario,
    calls_of,
    command,
    env_of,
    expanded,
    flags_of,
    run_script,
    sa_email,
    seed_secret,
)
from tests.support.eval_target import NO_TOOLS, staging_url
from tests.test_deploy_iam import recorded_bindings

pytestmark = pytest.mark.usefixtures("repo_on_path")


def steps(run: Run) -> list[str]:
    """The pipeline's calls that mark its steps, in order."""
    out = []
    for argv in run.argvs:
        words = command(argv)
        if words == ("builds", "submit"):
            name = flags_of(argv)["substitutions"].split("_FUNCTION_NAME=")[-1].split(",")[0]
            out.append(
                f"build {flags_of(argv)['config']}" + ("" if "test" in argv[4] else f" {name}")
            )
        elif words == ("functions", "describe"):
            if flags_of(argv).get("format") == "value(serviceConfig.uri)":
                out.append(" ".join(words))
        elif words == ("auth", "print-identity-token"):
            out.append(" ".join(words))
        elif words == ("run", "services", "add-iam-policy-binding"):
            out.append(f"invoker grant {argv[argv.index('add-iam-policy-binding') + 1]}")
    return out


def test_tests_then_staging_then_the_gate_then_production(scenario: Scenario) -> None:
    function, staging = expanded("FUNCTION_NAME"), expanded("STAGING_FUNCTION_NAME")
    assert steps(scenario.pipeline) == [
        "build cloudbuild-test.yaml",
        f"build cloudbuild.yaml {staging}",
        f"invoker grant {staging}",  # staging's queue may call staging, once it exists
        "functions describe",  # the staging function's URL
        "auth print-identity-token",  # the operator's token for the gate
        f"build cloudbuild.yaml {function}",
        f"invoker grant {function}",
    ]
    out = scenario.pipeline.output()
    assert out.index("eval gate PASSED") < out.index(f"production: {function}")
    assert "calculator_trajectory  yes   PASS" in out
    (describe,) = [
        c
        for c in calls_of(scenario.pipeline, "functions", "describe")
        if "--format=value(serviceConfig.uri)" in c
    ]
    assert describe[2] == staging
    # The token reaches the runner in its environment: in no argument, no output.
    token = "fake-identity-token-of-the-operator"
    assert token not in json.dumps(scenario.pipeline.argvs) and token not in out


def test_production_deploys_the_very_upload_staging_ran(scenario: Scenario) -> None:
    _, staged, production = calls_of(scenario.pipeline, "builds", "submit")
    assert staged[3] == "."  # the commit, uploaded once
    bucket = expanded("BUILD_SOURCE_BUCKET")
    state = json.loads((scenario.fake_dir / "state.json").read_text())
    staging_id, production_id = "build-2", "build-3"  # the first pipeline's builds
    upload = state["build_sources"][staging_id]["object"]
    assert production[3] == f"gs://{bucket}/{upload}"
    assert state["build_sources"][production_id]["copied_from"] == f"{bucket}/{upload}"
    assert f"production: {expanded('FUNCTION_NAME')}, from gs://{bucket}/{upload}" in (
        scenario.pipeline.output()
    )
    assert "ignore-file" not in flags_of(production)  # nothing to archive: an object copied


def test_staging_shares_nothing_mutable_with_production(scenario: Scenario) -> None:
    (staged,) = calls_of(scenario.staging, "functions", "deploy")
    (production,) = calls_of(scenario.deploy, "functions", "deploy")
    s_flags, p_flags = flags_of(staged), flags_of(production)
    s_env, p_env = env_of(s_flags), env_of(p_flags)
    assert (staged[2], production[2]) == (
        expanded("STAGING_FUNCTION_NAME"),
        expanded("FUNCTION_NAME"),
    )
    for key in ("FIRESTORE_DATABASE", "RESULTS_BUCKET"):  # histories, keys, spend; results
        assert s_env[key] == expanded(f"STAGING_{key}") != p_env[key], key
    assert s_flags["service-account"] == sa_email("STAGING_RUNTIME_SA_NAME")
    assert p_flags["service-account"] == sa_email("RUNTIME_SA_NAME")
    assert s_flags["min-instances"] == "0"
    # Background runs: staging's own queue and invoker, so its tasks never reach production.
    assert s_env["RUNS_QUEUE"].endswith("/queues/" + expanded("STAGING_RUNS_QUEUE_NAME"))
    assert p_env["RUNS_QUEUE"].endswith("/queues/" + expanded("RUNS_QUEUE_NAME"))
    assert s_env["RUNS_INVOKER"] == sa_email("STAGING_INVOKER_SA_NAME") != p_env["RUNS_INVOKER"]
    queues = [c[3] for c in calls_of(scenario.staging_setup, "tasks", "queues", "create")]
    assert queues == [expanded("STAGING_RUNS_QUEUE_NAME")]
    # setup.sh --staging made the staging database, bucket and account, and granted the
    # staging account its own database (by condition) and bucket, nothing of production's.
    staging_db = expanded("STAGING_FIRESTORE_DATABASE")
    (created,) = calls_of(scenario.staging_setup, "firestore", "databases", "create")
    assert f"--database={staging_db}" in created
    runtime = "serviceAccount:" + sa_email("STAGING_RUNTIME_SA_NAME")
    granted = [b for b in recorded_bindings(scenario.staging_setup) if b[2] == runtime]
    assert ("buckets", "gs://" + expanded("STAGING_RESULTS_BUCKET")) in {b[:2] for b in granted}
    (datastore,) = [b for b in granted if b[3] == "roles/datastore.user"]
    assert f"databases/{staging_db}" in str(datastore[4])
    assert not [b for b in granted if expanded("RESULTS_BUCKET") in b[1]]
    assert "databases/(default)" not in json.dumps(granted)
    # The deployer may deploy as the staging account; that grant too came from setup.
    deployer = "serviceAccount:" + sa_email("DEPLOYER_SA_NAME")
    assert ("service-accounts", sa_email("STAGING_RUNTIME_SA_NAME"), deployer) in {
        b[:3] for b in recorded_bindings(scenario.staging_setup)
    }


def failed_gate(tmp_path: Path, url: str) -> Run:
    fake = seed_secret(tmp_path / "fake")
    return run_script("pipeline.sh", fake, env={"FAKE_GCLOUD_FUNCTION_URL": url}, check=False)


def test_a_failed_gate_names_the_cases_and_production_is_not_deployed(tmp_path: Path) -> None:
    """The agent of this commit, told not to use tools, stops calling its calculator: the
    gate fails on staging, says which cases and why, and production is not deployed."""
    run = failed_gate(tmp_path, staging_url(NO_TOOLS))
    assert run.result.returncode != 0
    out, err = run.result.stdout, run.result.stderr
    line = next(x for x in out.splitlines() if x.startswith("FAIL calculator_trajectory:"))
    assert "tool calls (exact): expected [calculate(expression=/" in line and "got []" in line
    assert "FAIL approval_pause: turn 1: status: expected approval_required, got completed" in out
    assert "eval gate FAILED: critical case approval_pause failed" in out
    assert "eval gate on staging: FAILED (the cases above); production is NOT deployed" in err
    configs = [
        (flags_of(a)["config"], flags_of(a)["substitutions"].count("_FUNCTION_NAME=agent,"))
        for a in calls_of(run, "builds", "submit")
    ]
    assert configs == [("cloudbuild-test.yaml", 0), ("cloudbuild.yaml", 0)], "staging only"
    report = tmp_path / "fake" / "eval" / "report.md"
    assert "**calculator_trajectory** (FAIL)" in report.read_text()


def test_a_gate_that_cannot_run_stops_production_too(tmp_path: Path) -> None:
    run = failed_gate(tmp_path, "http://127.0.0.1:9")  # nothing answers there
    assert run.result.returncode != 0
    assert "eval gate on staging: could not run (exit 2); production is NOT deployed" in (
        run.result.stderr
    )
    assert len(calls_of(run, "builds", "submit")) == 2


def test_a_failed_staging_build_runs_no_gate(tmp_path: Path) -> None:
    fake = seed_secret(tmp_path / "fake")
    state = json.loads((fake / "state.json").read_text())
    (fake / "state.json").write_text(
        json.dumps(state | {"failing_builds": {"cloudbuild.yaml": "deploy"}})
    )
    run = run_script("pipeline.sh", fake, check=False)
    assert run.result.returncode != 0
    assert "cloudbuild.yaml: build build-2 ended FAILURE; failing step: deploy" in run.result.stderr
    assert calls_of(run, "auth", "print-identity-token") == []
    assert len(calls_of(run, "builds", "submit")) == 2


def test_dry_run_prints_the_four_steps_in_order(tmp_path: Path) -> None:
    run = run_script("pipeline.sh", tmp_path, "--dry-run")
    lines = [x for x in run.result.stdout.splitlines() if " builds submit " in x or "-m evals" in x]
    assert len(lines) == 4, run.result.stdout
    assert "cloudbuild-test.yaml" in lines[0]
    assert "_FUNCTION_NAME=agent-staging" in lines[1]
    assert "-m evals --url=" in lines[2] and "--min-pass-rate=0.8" in lines[2]
    assert "builds submit gs://" in lines[3] and re.search(r"_FUNCTION_NAME=agent\\?,", lines[3])
    assert run.calls == []


def test_setup_and_deploy_take_the_staging_names_with_their_own_code(tmp_path: Path) -> None:
    out = run_script("setup.sh", tmp_path, "--staging", "--dry-run").result.stdout
    assert f"--database={expanded('STAGING_FIRESTORE_DATABASE')}" in out
    assert f"gs://{expanded('STAGING_RESULTS_BUCKET')}" in out
    assert f"create {expanded('STAGING_RUNTIME_SA_NAME')} " in out
    out = run_script("deploy.sh", tmp_path, "--staging", "--dry-run").result.stdout
    assert f"functions deploy {expanded('STAGING_FUNCTION_NAME')} " in out
    assert f"--service-account={sa_email('STAGING_RUNTIME_SA_NAME')}" in out
    assert "--min-instances=0 " in out
