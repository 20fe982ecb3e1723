"""Issue 19 item 8: the digest pins refresh themselves. renovate.json's image manager
matches every digest-pinned build image where it is written (deploy/config.env and the
build files' substitution defaults), reading the same image, tag and digest in each, and
its allowed versions keep the images the pipeline was built for."""

from __future__ import annotations

import json
import re

from tests.support.deploy_scenarios import REPO, expanded


def renovate() -> dict[str, object]:
    config: dict[str, object] = json.loads((REPO / "renovate.json").read_text())
    return config


def python_regex(renovate_regex: str) -> re.Pattern[str]:
    """Renovate's named groups (?<name>...) in Python's spelling."""
    return re.compile(renovate_regex.replace("(?<", "(?P<"))


def test_the_image_manager_finds_each_pinned_image_in_every_file() -> None:
    (manager,) = renovate()["customManagers"]  # type: ignore[misc]
    files = [
        path
        for path in ["deploy/config.env", "cloudbuild.yaml", "cloudbuild-test.yaml"]
        if any(re.search(p.strip("/"), path) for p in manager["managerFilePatterns"])
    ]
    assert files == ["deploy/config.env", "cloudbuild.yaml", "cloudbuild-test.yaml"]
    (pattern,) = [python_regex(m) for m in manager["matchStrings"]]
    found: dict[str, set[tuple[str, str, str]]] = {}
    for path in files:
        for m in pattern.finditer((REPO / path).read_text()):
            found.setdefault(path, set()).add((m["depName"], m["currentValue"], m["currentDigest"]))
    pinned = set()
    for name in ("TEST_IMAGE", "DEPLOY_IMAGE"):
        image, digest = expanded(name).split("@")
        dep, tag = image.rsplit(":", 1)
        pinned.add((dep, tag, digest))
    assert found["deploy/config.env"] == pinned
    assert found["cloudbuild.yaml"] | found["cloudbuild-test.yaml"] == pinned


def test_allowed_versions_keep_the_runtime_and_the_stable_gcloud() -> None:
    rules = {r["matchPackageNames"][0]: r["allowedVersions"] for r in renovate()["packageRules"]}  # type: ignore[attr-defined]
    test_tag = expanded("TEST_IMAGE").split("@")[0].rsplit(":", 1)[1]
    deploy_tag = expanded("DEPLOY_IMAGE").split("@")[0].rsplit(":", 1)[1]
    assert re.search(rules["python"].strip("/"), test_tag)
    assert not re.search(rules["python"].strip("/"), "3.13-slim-bookworm")
    assert re.search(
        rules["gcr.io/google.com/cloudsdktool/google-cloud-cli"].strip("/"), deploy_tag
    )


def test_the_locks_are_managed() -> None:
    patterns = renovate()["pip-compile"]["managerFilePatterns"]  # type: ignore[index]
    for lock in ("requirements.txt", "requirements-dev.txt", "requirements-local.txt"):
        assert any(re.search(p.strip("/"), lock) for p in patterns), lock
