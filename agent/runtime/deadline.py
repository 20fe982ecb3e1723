"""Model calls bounded by the turn's deadline.

A turn must end, with its history committed, before the platform's timeout. The run
as a whole is cancelled at its deadline; this module adds the per-call rules:

* a model call is not started when less than ``MODEL_CALL_MIN_SECONDS`` is left: the
  turn ends at once with 504 instead of paying for an answer that cannot arrive;
* each call's HTTP timeout is the smaller of ``MODEL_TIMEOUT_SECONDS`` and the time
  left, so a slow provider fails the call instead of outliving the turn.

The deadline travels in a context variable set by ``within``: the SDK copies the
context into every task it starts for the run, and each run has its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from agents import Model, ModelResponse, ModelSettings
from agents.items import TResponseStreamEvent

T = TypeVar("T")

_run_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "run_deadline", default=None
)


class NoTimeForModelCall(TimeoutError):
    """Too little of the turn is left to start another model call."""


async def within(deadline: float, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` with model calls bounded by ``deadline`` (``time.monotonic()``)."""
    _run_deadline.set(deadline)
    return await coro


class DeadlineBoundModel(Model):
    """Wraps the agent's model; see the module docstring."""

    def __init__(self, inner: Model, *, call_timeout: float, min_call_seconds: float) -> None:
        self._inner = inner
        self._call_timeout = call_timeout
        self._min_call_seconds = min_call_seconds

    @property
    def inner(self) -> Model:
        """The model whose calls are bounded."""
        return self._inner

    def _bounded(self, model_settings: ModelSettings) -> tuple[ModelSettings, float | None]:
        deadline = _run_deadline.get()
        if deadline is None:  # used outside the service's turns: no deadline to keep
            return model_settings, None
        left = deadline - time.monotonic()
        if left < self._min_call_seconds:
            raise NoTimeForModelCall(f"{left:.2f} s left")
        # ``timeout`` goes to the OpenAI client's create(): this call's HTTP timeout.
        extra = {**(model_settings.extra_args or {}), "timeout": min(self._call_timeout, left)}
        return dataclasses.replace(model_settings, extra_args=extra), left

    async def get_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: ModelSettings,
        *args: Any,
        **kw: Any,
    ) -> ModelResponse:
        bounded, left = self._bounded(model_settings)
        call = self._inner.get_response(system_instructions, input, bounded, *args, **kw)
        if left is None:
            return await call
        async with asyncio.timeout(left):
            return await call

    async def stream_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: ModelSettings,
        *args: Any,
        **kw: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        # The stream as a whole is bounded by the run's own deadline (the caller cancels
        # it); here each read is bounded through the HTTP timeout.
        bounded, _ = self._bounded(model_settings)
        async for event in self._inner.stream_response(
            system_instructions, input, bounded, *args, **kw
        ):
            yield event

    def get_retry_advice(self, request: Any) -> Any:
        return self._inner.get_retry_advice(request)

    async def close(self) -> None:
        await self._inner.close()
