"""Commands replayed through the real gcloud CLI's argument parser, offline.

With an empty configuration gcloud stops a well-formed command at "no active account"
(exit 1), before any network call; a misspelt flag or a bad value fails earlier, in the
parser (exit 2). ``replay_batch`` runs many commands in one gcloud process
(gcloud_replay_driver.py, beside this file); ``replay_one`` runs the executable once per
command, the slow, plain way, which also covers whatever the batch did not get to.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.constants import REPO_ROOT

REAL_GCLOUD = shutil.which("gcloud", path="/usr/bin:/usr/local/bin:/usr/lib/google-cloud-sdk/bin")
NO_ACCOUNT = "You do not currently have an active account selected"


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
            cwd=REPO_ROOT,
            env={**os.environ, "CLOUDSDK_CONFIG": cfg, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"},
            timeout=120,
        )
    return argv, result.returncode, result.stdout + result.stderr


def replay_batch(commands: list[list[str]], workdir: Path) -> list[Replayed]:
    """Commands through gcloud's own CLI object, one process per batch (gcloud_replay_driver.py)."""
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
    driver = Path(__file__).with_name("gcloud_replay_driver.py")
    subprocess.run(
        [sdk[1], "-S", str(driver), sdk[0], str(workdir / "commands.jsonl"), str(results)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        cwd=REPO_ROOT,
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
    """Replay (argv, file content or None) pairs in a bounded pool of batch processes. The
    content (a bucket's lifecycle rule, a repository's cleanup policy) is written to a file
    of its own and named in the flag that read it: gcloud parses those files too."""
    workdir.mkdir(parents=True, exist_ok=True)
    commands = []
    for index, (argv, content) in enumerate(items):
        if content is not None:
            path = workdir / f"file-{index}.json"
            path.write_text(json.dumps(content))
            argv = [re.sub(r"^(--lifecycle-file|--policy)=.*", rf"\1={path}", a) for a in argv]
        commands.append(argv)
    chunks = [commands[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(lambda i: replay_batch(chunks[i], workdir / f"batch-{i}"), range(workers))
        return [result for part in parts for result in part]
