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


# -- issue 10 item 6: smaller findings ------------------------------------------------


@pytest.mark.parametrize("timeout", [1, 2, 3, 5, 9, 10, 14, 15, 30, 49, 50, 300, 3600])
def test_every_valid_timeout_starts_with_the_default_margin(timeout: int) -> None:
    settings = Settings.from_env({"FUNCTION_TIMEOUT_SECONDS": str(timeout)})
    assert 0.1 <= settings.deadline_margin_seconds <= timeout / 3
    assert settings.turn_budget_seconds > 0
    assert settings.model_call_min_seconds <= settings.turn_budget_seconds / 2
    if timeout >= 50:
        assert settings.deadline_margin_seconds == 5.0
        assert settings.model_call_min_seconds == 1.0


def test_an_explicit_margin_is_still_checked() -> None:
    with pytest.raises(SettingsError, match="DEADLINE_MARGIN_SECONDS"):
        Settings.from_env({"FUNCTION_TIMEOUT_SECONDS": "10", "DEADLINE_MARGIN_SECONDS": "5"})


@pytest.mark.parametrize("name", ["AUTH_CERTS_URL", "IAM_CREDENTIALS_ENDPOINT"])
@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:@evil.example/",
        "http://localhost.evil.example/",
        "http://127.0.0.1.evil.example/",
        "http://user:pass@localhost/",
        "http://evil.example/",
        "http://[::1].evil.example/",
        "ftp://127.0.0.1/",
        "https:///nohost",
        "https://user@example.com/",
    ],
)
def test_loopback_exceptions_need_exactly_a_loopback_host(name: str, url: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: url})


@pytest.mark.parametrize("name", ["AUTH_CERTS_URL", "IAM_CREDENTIALS_ENDPOINT"])
@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]:8080/", "https://example.com/"],
)
def test_loopback_and_https_urls_are_accepted(name: str, url: str) -> None:
    Settings.from_env({name: url})


def test_the_base_url_is_logged_without_credentials(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from agent.service import build_service

    caplog.set_level(logging.INFO)
    # Read by Google's client, which then needs no credentials (nothing is called).
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    env = {
        "OPENAI_BASE_URL": "https://user:hunter2@llm.example:8443/v1?api_key=sk-query#frag",
        "GOOGLE_CLOUD_PROJECT": "p",
        "AUTH_MODE": "none",
    }
    service = build_service(Settings.from_env(env))
    try:
        logged = caplog.text
    finally:
        service.close()
    assert "https://llm.example:8443/v1" in logged
    for secret in ("hunter2", "user:", "sk-query", "frag"):
        assert secret not in logged
