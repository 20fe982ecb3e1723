"""Shared fixtures: the real Firestore emulator, the HTTP model, and app builders.

The emulator starts once per run on free ports and is wiped before each test. Where
it is not installed, tests that need it skip with the reason and the run ends with
a warning line; with REQUIRE_FIRESTORE_EMULATOR=1 (CI, Cloud Build) they fail instead.
More fixtures come from the plugins in ``pytest_plugins`` (tests/support/): the storage
emulator and signing keys for results, and the deploy scripts' runs for the deploy tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator, firestore_emulator_missing
from tests.support.constants import MODEL, PROJECT

pytest_plugins = [
    "tests.support.storage_fixtures",
    "tests.support.deploy_scenarios",
]

_skipped_for_emulator: list[str] = []


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    reason = firestore_emulator_missing()
    if reason:
        if os.environ.get("REQUIRE_FIRESTORE_EMULATOR") == "1":
            pytest.fail(f"REQUIRE_FIRESTORE_EMULATOR=1 but {reason}")
        _skipped_for_emulator.append(reason)
        pytest.skip(reason)
    emulator = FirestoreEmulator().start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    yield emulator
    emulator.stop()


@pytest.fixture
def firestore(firestore_emulator: FirestoreEmulator) -> FirestoreEmulator:
    """The emulator, empty."""
    firestore_emulator.wipe(PROJECT)
    return firestore_emulator


@pytest.fixture
def store_env(firestore: FirestoreEmulator) -> dict[str, str]:
    """Environment for a service on an empty history store."""
    return {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": firestore.host,
    }


@pytest.fixture(scope="session")
def model_server() -> Iterator[DemoModelServer]:
    server = DemoModelServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def model(model_server: DemoModelServer) -> DemoModelServer:
    model_server.reset()
    return model_server


@pytest.fixture
def settings_env(firestore: FirestoreEmulator, model: DemoModelServer) -> dict[str, str]:
    """Environment for a service on the emulator and the HTTP model."""
    return {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": firestore.host,
        "OPENAI_BASE_URL": model.base_url,
        "AGENT_MODEL": MODEL,
        "MODEL_MAX_RETRIES": "0",
        "FIRESTORE_TIMEOUT_SECONDS": "3",
        "AUTH_MODE": "none",  # tests of other areas; tests/test_auth.py covers the rest
    }


@pytest.fixture
def make_client(settings_env: dict[str, str]) -> Iterator[Callable[..., FlaskClient]]:
    """Builds the app from settings (overrides as keyword arguments) and returns its
    test client. Every service built is closed at the end of the test."""
    from agent.api.app import create_app
    from agent.base.settings import Settings
    from agent.service import build_service

    services: list[Any] = []

    def build(**overrides: str) -> FlaskClient:
        env = settings_env | {key.upper(): str(value) for key, value in overrides.items()}
        service = build_service(Settings.from_env(env))
        services.append(service)
        return create_app(service).test_client()

    yield build
    for service in services:
        service.close()


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_for_emulator:
        terminalreporter.write_line(
            f"WARNING: Firestore tests were SKIPPED, not passed: {_skipped_for_emulator[0]}",
            yellow=True,
            bold=True,
        )
