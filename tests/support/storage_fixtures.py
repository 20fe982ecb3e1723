"""Fixtures for results in Cloud Storage: the storage emulator and a signing key.

A pytest plugin, listed in ``pytest_plugins`` of tests/conftest.py. The emulator starts
once per test run on a free port, with one bucket, and is wiped before each test that
uses it; ``STORAGE_EMULATOR_HOST`` points the storage client at it (the client reads it
when it is created, which the service does on its first offload). URLs are signed with a
throw-away key made for the run; its public half verifies them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.emulators import StorageEmulator, storage_emulator_missing
from local.throwaway_key import ThrowawayKey, new_key
from tests.support.constants import PROJECT, RESULTS_SIGNER


@pytest.fixture(scope="session")
def storage_emulator() -> Iterator[StorageEmulator]:
    reason = storage_emulator_missing()
    if reason:  # a PyPI package in requirements-dev.in: missing means a broken setup
        pytest.fail(reason)
    emulator = StorageEmulator().start()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    yield emulator
    emulator.stop()


@pytest.fixture
def storage(storage_emulator: StorageEmulator) -> StorageEmulator:
    """The emulator with its bucket, empty."""
    storage_emulator.wipe()
    return storage_emulator


@pytest.fixture(scope="session")
def signing_key() -> ThrowawayKey:
    return new_key(RESULTS_SIGNER)


@pytest.fixture(scope="session")
def signing_key_file(signing_key: ThrowawayKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return signing_key.write(tmp_path_factory.mktemp("key"), PROJECT)


@pytest.fixture
def results_env(
    settings_env: dict[str, str], storage: StorageEmulator, signing_key_file: Path
) -> dict[str, str]:
    """Settings for a service that offloads large answers to the emulator's bucket."""
    return settings_env | {
        "STORAGE_EMULATOR_HOST": storage.url,  # read by the library (os.environ), not Settings
        "RESULTS_BUCKET": storage.bucket,
        "GOOGLE_APPLICATION_CREDENTIALS": str(signing_key_file),
    }
