"""Which model the agent talks to, and through which client.

``MODEL_PROVIDER=openai``: OpenAI, or any OpenAI-compatible server, with a key.
``MODEL_PROVIDER=vertex``: Gemini on Vertex AI's OpenAI-compatible endpoint, with the
runtime's own access token instead of a key (``vertex_tokens.py``).

One ``AsyncOpenAI`` client per process: it holds the connection pool, and it must be
used from the one event loop that ``event_loop.py`` runs (httpx binds its pool to
the loop that first uses it).
"""

from __future__ import annotations

from agents import (
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    set_trace_provider,
    set_tracing_disabled,
)
from agents.tracing import setup as trace_setup
from agents.tracing.provider import DefaultTraceProvider
from openai import AsyncOpenAI

from agent.base.settings import Settings
from agent.runtime import sdk_traces
from agent.runtime.deadline import DeadlineBoundModel
from agent.runtime.metering import MeteredModel
from agent.runtime.openai_client import ChatCompletionsClient
from agent.runtime.vertex_tokens import AccessTokens

# Compatible servers reject an empty key though most ignore it.
_PLACEHOLDER_KEY = "not-needed"


class ModelConfigError(ValueError):
    """No model is configured: neither OPENAI_API_KEY nor OPENAI_BASE_URL is set, and
    the provider is not Vertex AI."""


def _route_sdk_traces(settings: Settings) -> None:
    """The SDK's traces go to OpenAI only with TRACING_ENABLED, and to OpenTelemetry
    (the request's trace) only with TRACE_EXPORT; with neither, or with the SDK's own
    OPENAI_AGENTS_DISABLE_TRACING=true, it makes none."""
    # The SDK uploads traces as soon as a key exists; never unless asked for.
    if not sdk_traces.uploads_to_openai(settings) and trace_setup.GLOBAL_TRACE_PROVIDER is None:
        # A provider without processors: the SDK's default one, built on first use,
        # would make an HTTP exporter (about 40 ms at startup) just to be disabled, or
        # upload what only OpenTelemetry should get. A provider someone already set up
        # (processors of their own) is kept.
        set_trace_provider(DefaultTraceProvider())
    if settings.trace_export != "none":
        from agent.runtime import otel_bridge  # OpenTelemetry: only now

        otel_bridge.install(settings.model_provider)
    # Explicitly, both ways: the SDK's provider reads OPENAI_AGENTS_DISABLE_TRACING once,
    # and a manual setting overrides it, so "on" must never be set past that variable.
    set_tracing_disabled(not sdk_traces.sdk_tracing_on(settings))


def build_model(settings: Settings, name: str | None = None) -> Model:
    """The agent's model (or the model ``name`` on the same provider): OpenAI or any
    OpenAI-compatible server, bounded by the turn's deadline, each call reported to the
    turn's meter (``metering.py``). Raises ModelConfigError
    when no model is configured."""
    name = name or settings.agent_model
    vertex = settings.model_provider == "vertex"
    if not vertex and not settings.openai_api_key and not settings.openai_base_url:
        raise ModelConfigError(
            "set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (a compatible server)"
        )
    _route_sdk_traces(settings)
    chat = settings.model_api == "chat_completions"
    api_key: str | AccessTokens = settings.openai_api_key or _PLACEHOLDER_KEY
    base_url = settings.openai_base_url
    if vertex:
        # Quota errors (429) are retried by the client with backoff, within the
        # deadline; past that the turn answers 503 model_overloaded.
        api_key, base_url = AccessTokens(), settings.vertex_base_url
    client = (ChatCompletionsClient if chat else AsyncOpenAI)(
        api_key=api_key,
        base_url=base_url,
        timeout=settings.model_timeout_seconds,
        max_retries=settings.model_max_retries,
    )
    model: Model
    if chat:
        model = OpenAIChatCompletionsModel(model=name, openai_client=client)
    else:
        model = OpenAIResponsesModel(model=name, openai_client=client)
    # Metered inside the deadline's bound: a call refused for want of time is never
    # sent, so never charged.
    return DeadlineBoundModel(
        MeteredModel(model, name),
        call_timeout=settings.model_timeout_seconds,
        min_call_seconds=settings.model_call_min_seconds,
    )
