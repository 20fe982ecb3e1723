"""The OpenAI client for the Chat Completions API, minus a costly no-op.

Before every request the ``openai`` package walks the whole body (every message of
the history, every tool schema) against its TypedDict annotations, trying each
member of each union, to rename aliased keys and format dates. Chat Completions
request types have no such keys, so the walk returns what it was given; but it
costs CPU in proportion to the history: measured, 3-4 of the 11-13 ms of CPU one
turn of this service took with histories of up to 28 messages. A CPU-bound
instance serves that many fewer turns per second.

This client sends ``messages`` and ``tools`` through ``extra_body``, which the
``openai`` package merges into the JSON body unchanged (documented: extra keys take
precedence). ``tests/test_openai_client.py`` checks that the model receives the
very same request bodies as through the plain client, so an ``openai`` upgrade that
starts transforming these fields fails a test instead of changing requests. The
Responses API's request types do have such keys, so it keeps the plain client.

It also notes what each response says about itself (id, model, finish reasons, or the
error's type) for the call's span (``sdk_traces.current_call``): the SDK's generation
span keeps none of it. Only while spans are exported; otherwise this costs one check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from functools import cached_property
from typing import Any

from openai import AsyncOpenAI, AsyncStream, NotGiven, Omit, omit
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agent.runtime import sdk_traces
from agent.runtime.sdk_traces import CallFacts


class _Completions(AsyncCompletions):
    async def create(  # type: ignore[override]
        self,
        *,
        messages: Iterable[Any],
        tools: Any = omit,
        extra_body: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        body = {**(extra_body or {}), "messages": list(messages)}
        if not isinstance(tools, Omit | NotGiven):
            body["tools"] = list(tools)
        facts = sdk_traces.current_call()
        try:
            response = await super().create(messages=[], extra_body=body, **kwargs)
        except Exception as exc:
            if facts is not None:
                facts.error_type = type(exc).__qualname__  # "RateLimitError", no text
            raise
        if facts is not None and isinstance(response, ChatCompletion):
            _note(facts, response.id, response.model, response.choices)
        elif facts is not None and isinstance(response, AsyncStream):
            # The stream is read by the SDK: note each chunk as it passes. openai's
            # AsyncStream iterates through ``_iterator`` (tests/test_tracing.py fails
            # if a release stops doing so: the streamed chat span loses its id).
            response._iterator = _noting(facts, response._iterator)
        return response


def _note(facts: CallFacts, response_id: str, model: str, choices: Iterable[Any]) -> None:
    facts.response_id = response_id or facts.response_id
    facts.response_model = model or facts.response_model
    facts.finish_reasons += [c.finish_reason for c in choices if c.finish_reason]


async def _noting(
    facts: CallFacts, chunks: AsyncIterator[ChatCompletionChunk]
) -> AsyncIterator[ChatCompletionChunk]:
    async for chunk in chunks:
        _note(facts, chunk.id, chunk.model, chunk.choices)
        yield chunk


class _Chat(AsyncChat):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return _Completions(self._client)


class ChatCompletionsClient(AsyncOpenAI):
    """``AsyncOpenAI`` whose ``chat.completions.create`` skips the body transform."""

    @cached_property
    def chat(self) -> AsyncChat:
        return _Chat(self)
