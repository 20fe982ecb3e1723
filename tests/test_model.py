"""Model selection, and tracing upload off unless the operator turns it on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel, set_trace_processors
from agents.tracing import TracingProcessor, get_trace_provider, set_trace_provider
from agents.tracing.provider import DefaultTraceProvider
from flask.testing import FlaskClient

from agent.base.settings import Settings
from agent.runtime.deadline import DeadlineBoundModel
from agent.runtime.metering import MeteredModel
from agent.runtime.model import ModelConfigError, build_model
from tests.support.constants import UNREACHABLE_MODEL_URL


class Recorder(TracingProcessor):
    """Stands in for the exporter that would upload traces to OpenAI."""

    def __init__(self) -> None:
        self.traces: list[Any] = []

    def on_trace_start(self, trace: Any) -> None:
        self.traces.append(trace)

    def on_trace_end(self, trace: Any) -> None: ...
    def on_span_start(self, span: Any) -> None: ...
    def on_span_end(self, span: Any) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self) -> None: ...


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A trace provider of its own for the test, whose only processor is the recorder (no
    exporter: nothing can leave the machine); the process's provider, with whatever the
    service registered on it (the OpenTelemetry bridge), is put back after."""
    previous = get_trace_provider()
    provider = DefaultTraceProvider()
    set_trace_provider(provider)
    recorder = Recorder()
    set_trace_processors([recorder])
    yield recorder
    set_trace_processors([])
    provider.set_disabled(True)
    set_trace_provider(previous)


def test_no_traces_by_default(make_client: Any, recorder: Recorder) -> None:
    client: FlaskClient = make_client()
    assert client.post("/chat", json={"message": "secret plans"}).status_code == 200
    assert recorder.traces == []


def test_traces_when_the_operator_opts_in(make_client: Any, recorder: Recorder) -> None:
    client: FlaskClient = make_client(tracing_enabled="true")
    assert client.post("/chat", json={"message": "hello"}).status_code == 200
    assert len(recorder.traces) == 1


def test_api_choice() -> None:
    def built(env: dict[str, str]) -> Any:
        model = build_model(Settings.from_env(env))
        assert isinstance(model, DeadlineBoundModel)  # every call bounded by the turn
        metered = model.inner
        assert isinstance(metered, MeteredModel)  # and reported to the turn's meter
        return metered.inner

    compatible = built({"OPENAI_BASE_URL": UNREACHABLE_MODEL_URL})
    assert isinstance(compatible, OpenAIChatCompletionsModel)
    openai = built({"OPENAI_API_KEY": "sk-x"})
    assert isinstance(openai, OpenAIResponsesModel)
    forced = built({"OPENAI_API_KEY": "sk-x", "MODEL_API": "chat_completions"})
    assert isinstance(forced, OpenAIChatCompletionsModel)


def test_no_model_configured_fails_at_startup() -> None:
    with pytest.raises(ModelConfigError, match="OPENAI_API_KEY"):
        build_model(Settings.from_env({}))
