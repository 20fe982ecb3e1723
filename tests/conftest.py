"""Shared fixtures: the history store, the HTTP model, and app builders.

The history store of the tests (``store_env``, and every app and server built on it)
is Firestore on the real emulator when the emulator is installed, and the SQLite store
otherwise (``TEST_HISTORY_BACKEND=sqlite|firestore`` chooses explicitly). Tests that
need Firestore itself request the ``firestore`` fixture, which also puts their service
on Firestore. The emulator starts once per run on free ports and is wiped before each
test. Where it is not installed, those tests skip with the reason and the run's last
line says how many were skipped and why; with REQUIRE_FIRESTORE_EMULATOR=1 (CI, Cloud
Build) they fail instead.
More fixtures come from the plugins in ``pytest_plugins`` (tests/support/): the storage
emulator and signing keys for results, the deploy scripts' runs for the deploy tests, the
fault proxy in front of Firestore, and exported spans kept in memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from local.demo_model import DemoModelServer
from local.emulators import FirestoreEmulator, firestore_emulator_missing
from tests.support.constants import MODEL, PROJECT
from tests.support.stores import backend_under_test

pytest_plugins = [
    "tests.support.storage_fixtures",
    "tests.support.deploy_scenarios",
    "tests.support.fault_fixtures",
    "tests.support.span_fixtures",
]

_firestore_only_skipped: set[str] = set()


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    reason = firestore_emulator_missing()
    if reason:
        if os.environ.get("REQUIRE_FIRESTORE_EMULATOR") == "1":
            pytest.fail(f"REQUIRE_FIRESTORE_EMULATOR=1 but {reason}")
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
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for a service on an empty history store: Firestore on the emulator
    or a fresh SQLite file (``backend_under_test``); Firestore whenever the test also
    requests the ``firestore`` fixture (it looks at Firestore itself)."""
    if backend_under_test() == "firestore" or "firestore" in request.fixturenames:
        emulator: FirestoreEmulator = request.getfixturevalue("firestore")
        return {
            "HISTORY_BACKEND": "firestore",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": emulator.host,
        }
    return {
        "HISTORY_BACKEND": "sqlite",
        "SQLITE_PATH": str(tmp_path / "history.sqlite3"),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
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
def settings_env(store_env: dict[str, str], model: DemoModelServer) -> dict[str, str]:
    """Environment for a service on the history store and the HTTP model."""
    return store_env | {
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
        # Tests of the deployed behaviour (K_SERVICE) on the SQLite store, which a real
        # deploy refuses (tests/test_sqlite_store.py checks that): set it past the check.
        k_service = env.pop("K_SERVICE", None) if env["HISTORY_BACKEND"] == "sqlite" else None
        settings = Settings.from_env(env)
        if k_service is not None:
            settings = dataclasses.replace(settings, k_service=k_service)
        service = build_service(settings)
        services.append(service)
        return create_app(service).test_client()

    yield build
    for service in services:
        service.close()


@pytest.fixture
def client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # By the reason, so that tests skipping on their own (the benchmark's) count too.
    reason = firestore_emulator_missing() if report.skipped else None
    if reason and reason in str(report.longrepr):
        _firestore_only_skipped.add(report.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"history store of the tests: {backend_under_test()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """After the terminal's own summary line, so that this is the run's last line."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _firestore_only_skipped and reporter is not None:
        count = len(_firestore_only_skipped)
        reporter.write_line(
            f"WARNING: {count} Firestore-only tests were SKIPPED, not passed:"
            f" {firestore_emulator_missing()}. Every other test ran on the"
            f" {backend_under_test()} store.",
            yellow=True,
            bold=True,
        )
    return result
