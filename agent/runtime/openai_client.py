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
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Any

from openai import AsyncOpenAI, NotGiven, Omit, omit
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions


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
        return await super().create(messages=[], extra_body=body, **kwargs)


class _Chat(AsyncChat):
    @cached_property
    def completions(self) -> AsyncCompletions:
        return _Completions(self._client)


class ChatCompletionsClient(AsyncOpenAI):
    """``AsyncOpenAI`` whose ``chat.completions.create`` skips the body transform."""

    @cached_property
    def chat(self) -> AsyncChat:
        return _Chat(self)
