"""The Agents SDK's own traces: where they go, and what each run's trace may carry.

``TRACING_ENABLED`` uploads them to OpenAI, ``TRACE_EXPORT`` mirrors them into the
request's OpenTelemetry trace (``otel_bridge.py``, loaded and installed only then; it
reads this module, never the other way round), and
``OPENAI_AGENTS_DISABLE_TRACING`` stops both. Each run's ``RunConfig`` gets its tracing
fields here (``run_tracing``): message text only with ``TRACE_CONTENT``, the conversation
as a hash of its id. A model call's response facts the SDK's spans do not keep (the
response's id and model, finish reasons, the error's type) are noted here by the
OpenAI client while the call's span is current, for the bridge to read when it ends.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from dataclasses import dataclass, field
from typing import TypedDict

from agents.tracing import GenerationSpanData, get_current_span
from agents.tracing.spans import NoOpSpan

from agent.base.settings import Settings

PROVIDERS = {"openai": "openai", "vertex": "gcp.vertex_ai"}
"""``gen_ai.provider.name`` of each MODEL_PROVIDER."""


def uploads_to_openai(settings: Settings) -> bool:
    """Whether the SDK's traces go to OpenAI: ``TRACING_ENABLED``, unless the SDK's own
    ``OPENAI_AGENTS_DISABLE_TRACING`` says no (an operator who set it expects nothing to
    leave, whatever this service's switch says)."""
    return settings.tracing_enabled and not settings.openai_agents_disable_tracing


def sdk_tracing_on(settings: Settings) -> bool:
    """Whether the SDK makes traces at all: for OpenAI's backend or for OpenTelemetry
    (``TRACE_EXPORT``), and never with ``OPENAI_AGENTS_DISABLE_TRACING=true``."""
    if settings.openai_agents_disable_tracing:
        return False
    return settings.tracing_enabled or settings.trace_export != "none"


class RunTracing(TypedDict):
    """The tracing fields of the SDK's ``RunConfig`` for one run (``RunConfig(**...)``)."""

    tracing_disabled: bool
    trace_include_sensitive_data: bool
    workflow_name: str
    group_id: str


CONVERSATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "conversation", default=None
)
"""The session id of the run being prepared, for ``gen_ai.conversation.id`` on the
OpenTelemetry side (the operator's own backend, whose spans already name the session)."""


def run_tracing(settings: Settings, workflow_name: str, session_id: str) -> RunTracing:
    """What the SDK's trace of a run may carry. Prompts, replies and tool arguments only
    with ``TRACE_CONTENT`` (the SDK's own default is to include them, for every exporter,
    OpenAI's included); the conversation as a SHA-256 of its id, which groups its turns
    without handing the id (a bearer of the conversation for its owner) to a backend.

    Also names the conversation in the calling context: the run's task runs in a copy of
    it (``event_loop.py``), where the OpenTelemetry bridge reads it."""
    CONVERSATION.set(session_id)
    return RunTracing(
        tracing_disabled=not sdk_tracing_on(settings),
        trace_include_sensitive_data=settings.trace_content,
        workflow_name=workflow_name,
        group_id=conversation_hash(session_id),
    )


def conversation_hash(session_id: str) -> str:
    """The SHA-256 hex digest of a session id: the conversation's name in traces."""
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class CallFacts:
    """What a model call's response said, beyond what the SDK's span keeps."""

    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error_type: str | None = None


_calls: dict[str, CallFacts] = {}  # by the SDK span id of the call, until that span ends
_calls_lock = threading.Lock()


def current_call() -> CallFacts | None:
    """The facts of the model call whose span is current, to be filled in by the
    client; None when no bridge would read them (export off, or tracing off)."""
    if not _noting:
        return None
    span = get_current_span()
    if span is None or isinstance(span, NoOpSpan):
        return None
    if not isinstance(span.span_data, GenerationSpanData):
        return None
    with _calls_lock:
        return _calls.setdefault(span.span_id, CallFacts())


def call_ended(span_id: str) -> CallFacts | None:
    """The facts noted for the call whose span ``span_id`` ended, forgotten here."""
    with _calls_lock:
        return _calls.pop(span_id, None)


_noting = False  # a bridge reads the facts: set once by ``otel_bridge.install``


def note_calls() -> None:
    """From now on, note each model call's facts (``current_call``): a bridge reads them."""
    global _noting
    _noting = True
