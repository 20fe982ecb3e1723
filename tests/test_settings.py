"""Settings come from the environment in one place and fail fast when wrong."""

from __future__ import annotations

import pytest

from agent.base.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.session_ttl_seconds == 3600
    assert settings.function_timeout_seconds == 300
    assert settings.max_request_bytes == 262_144
    assert settings.max_message_chars == 32_000
    assert settings.agent_model == "gpt-4o-mini"
    assert settings.model_api == "responses"
    assert settings.tracing_enabled is False


def test_every_field_is_read_from_its_upper_case_variable() -> None:
    env = {
        "SESSION_TTL_SECONDS": "120",
        "FUNCTION_TIMEOUT_SECONDS": "90",
        "AGENT_MODEL": "m",
        "TRACING_ENABLED": "true",
        "MODEL_MAX_RETRIES": "0",
        "FIRESTORE_TIMEOUT_SECONDS": "2.5",
        "GOOGLE_CLOUD_PROJECT": "p",
    }
    settings = Settings.from_env(env)
    assert (settings.session_ttl_seconds, settings.function_timeout_seconds) == (120, 90)
    assert (settings.agent_model, settings.tracing_enabled) == ("m", True)
    assert (settings.model_max_retries, settings.firestore_timeout_seconds) == (0, 2.5)
    assert settings.google_cloud_project == "p"


def test_base_url_defaults_the_api_to_chat_completions() -> None:
    assert Settings.from_env({"OPENAI_BASE_URL": "http://x/v1"}).model_api == "chat_completions"
    explicit = {"OPENAI_BASE_URL": "http://x/v1", "MODEL_API": "responses"}
    assert Settings.from_env(explicit).model_api == "responses"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_TTL_SECONDS", "0"),
        ("SESSION_TTL_SECONDS", "abc"),
        ("FUNCTION_TIMEOUT_SECONDS", "3601"),
        ("DEADLINE_MARGIN_SECONDS", "200"),  # over a third of the 300 s timeout
        ("MAX_REQUEST_BYTES", str(64 * 1024 * 1024)),
        ("MODEL_API", "completions"),
        ("TRACING_ENABLED", "maybe"),
        ("AGENT_MAX_TURNS", "0"),
    ],
)
def test_bad_values_fail_at_startup_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_key_never_shows_in_repr() -> None:
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-secret"})
    assert "sk-secret" not in repr(settings)
