"""Values the tests share, each spelled once."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

PROJECT = "agent-test"
"""The Google Cloud project id of the service under test (emulators, stand-ins, keys)."""

DEPLOY_PROJECT = "test-proj-42"
"""The project the deploy scripts are run for, against the fake gcloud."""

MODEL = "demo-model"
"""The model name the service asks the demo model (local/demo_model.py) for."""

LOOPBACK = "127.0.0.1"

UNREACHABLE_MODEL_URL = f"http://{LOOPBACK}:9/v1"
"""A model base URL nothing answers on (the discard port), for tests that never call it."""

# API keys of two principals, alice and bob (AUTH_MODE=api_key), and AUTH_API_KEYS for both.
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
API_KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"


def service_account_email(name: str, project: str = PROJECT) -> str:
    """The email of service account ``name`` in ``project``."""
    return f"{name}@{project}.iam.gserviceaccount.com"


RESULTS_SIGNER = service_account_email("results-signer")
"""The service account of the throw-away key that signs result URLs."""
