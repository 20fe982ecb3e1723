"""Every gcloud command the scripts ran against the fake, and every gcloud command
deploy/README.md tells the operator to run, passes the real gcloud CLI's argument parser
(offline: with an empty configuration it stops at "no active account" before any network
call), and the replay is shown to catch a misspelt flag or a bad value, in one process and
per command. Skipped where the gcloud CLI is not installed.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploy_scenarios import DEPLOY, PROJECT, Scenario, normalized
from tests.support.gcloud_replay import (
    NO_ACCOUNT,
    REAL_GCLOUD,
    replay_all,
    replay_batch,
    replay_one,
)

pytestmark = pytest.mark.usefixtures("repo_on_path")


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
    scenario: Scenario, vertex_scenario: Scenario, tmp_path: Path
) -> None:
    if REAL_GCLOUD is None:
        pytest.skip("gcloud CLI not installed: recorded commands cannot be replayed")
    unique: dict[str, tuple[list[str], Any]] = {}
    runs = [run for s in (scenario, vertex_scenario) for run in s.runs()]
    for run in runs:
        for call in run.calls:
            argv = list(call["argv"])
            content = call.get("lifecycle", call.get("cleanup_policy"))
            unique.setdefault(json.dumps(normalized(argv)), (argv, content))
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
