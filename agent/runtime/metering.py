"""Every model call a turn makes, and what the provider reported it used: ``Meter``.

Why it exists: a principal's budget must see every model call of a turn, whatever the
turn's outcome (a stream whose reader left, ``AGENT_MAX_TURNS``, the deadline, a failed
call after earlier ones, the history summary before a turn that then fails). The run's
own usage (``RunResult``) exists only when the run ends well, so the calls are counted
here instead, one layer below the SDK's runner: ``MeteredModel`` wraps each model the
service builds (the agent's and the summariser's) and reports every call to the meter of
the turn it runs in. The turn layer reads the meter when the turn ends
(``agent/turn/metering.py``) and charges it, apart from the turn's commit.

What a call is charged, in integer micro-dollars (one call's cost rounded up, so a sum of
calls never rounds a cost away):

* the usage the provider reported, priced per call (``pricing.cost_usd``);
* nothing when the provider refused the call with an error status (4xx/5xx: nothing was
  generated) or when it was never sent (the turn's reservation spent; a call refused for
  want of time, ``deadline.py``, never reaches this wrapper);
* otherwise (a transport error, a timeout: the provider may have generated an answer it
  bills for) the call's *reservation*: its input estimated from the request's size at the
  input price, plus ``OUTPUT_RESERVE_TOKENS`` (or the call's ``max_tokens``) at the
  output price.

A call is not abandoned with its reader: the provider's answer is read to its end on a
task of its own, so a streamed call whose turn was cancelled (the client left, the
deadline) still delivers its usage, and a call the run stopped waiting for is still
counted. ``Meter.wait`` waits for those; a call still open when the wait ends is charged
its reservation.

The meter of a turn travels in a context variable, set by ``bind`` in the thread that
starts the turn's work on the event loop: ``BackgroundLoop`` runs a coroutine in a copy of
the submitting thread's context and the SDK copies it into every task of the run. Outside
a turn (no meter bound) a call passes through unmetered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import math
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import openai
from agents import Model, ModelResponse, ModelSettings
from agents.items import TResponseStreamEvent

from agent.runtime.context import estimate_text
from agent.runtime.pricing import Price, cost_usd

OUTPUT_RESERVE_TOKENS = 4096
"""Output tokens a call whose usage never arrived is charged for, when it set no
``max_tokens``."""

_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("meter", default=None)


class ReservationSpent(Exception):
    """The turn has been charged its whole reservation: no further model call starts."""


def micros_of(dollars: float | None) -> int:
    """US dollars as integer micro-dollars, rounded up (None: unpriced, 0)."""
    if not dollars:
        return 0
    # round() first: 0.1 + 0.2 style float noise must not round a whole micro up.
    return math.ceil(round(dollars * 1_000_000, 3))


@dataclass(frozen=True)
class Charge:
    """One model call: its model, the tokens the provider reported (None when it reported
    none), and what it was charged."""

    model: str
    micros: int
    input_tokens: int | None = None
    cached_input_tokens: int | None = None
    output_tokens: int | None = None
    reserved: bool = False
    """Charged its reservation: its usage never arrived."""


class Meter:
    """The model calls of one turn. Thread-safe: calls report on the event loop, the turn
    reads from its request thread."""

    def __init__(self, prices: Mapping[str, Price], *, cap_micros: int | None = None) -> None:
        """``cap_micros``: once the turn has been charged this much, no call starts."""
        self._prices = prices
        self._cap = cap_micros
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._charges: list[Charge] = []
        self._open: dict[int, int] = {}  # call number -> its reservation
        self._next = 0

    @property
    def charges(self) -> tuple[Charge, ...]:
        with self._lock:
            return tuple(self._charges)

    @property
    def charged_micros(self) -> int:
        """What the finished calls were charged."""
        with self._lock:
            return sum(c.micros for c in self._charges)

    @property
    def open_calls(self) -> int:
        with self._lock:
            return len(self._open)

    def total_micros(self) -> int:
        """The finished calls' charges plus the reservation of each call still open."""
        with self._lock:
            return sum(c.micros for c in self._charges) + sum(self._open.values())

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every open call to finish; False if some
        are still open (``total_micros`` charges them their reservation)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._open, timeout=max(0.0, timeout))

    def _start(self, model: str, reserve_micros: int) -> int:
        with self._lock:
            spent = sum(c.micros for c in self._charges) + sum(self._open.values())
            if self._cap is not None and spent >= self._cap:
                raise ReservationSpent
            self._next += 1
            self._open[self._next] = reserve_micros
            return self._next

    def _finish(self, call: int, charge: Charge) -> None:
        with self._idle:
            self._open.pop(call, None)
            self._charges.append(charge)
            self._idle.notify_all()

    def price(self, model: str, usage: Any) -> Charge:
        """The charge for a call that reported ``usage`` (the SDK's or the Responses
        API's shape: input_tokens, output_tokens, input_tokens_details.cached_tokens)."""
        input_tokens = int(getattr(usage, "input_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "output_tokens", 0) or 0)
        details = getattr(usage, "input_tokens_details", None)
        cached = int(getattr(details, "cached_tokens", 0) or 0)
        dollars = cost_usd(
            self._prices,
            model,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
        )
        return Charge(model, micros_of(dollars), input_tokens, cached, output_tokens)

    def reservation(self, model: str, request: Any, max_tokens: int | None) -> int:
        """What a call is charged when its usage never arrives (module docstring)."""
        dollars = cost_usd(
            self._prices,
            model,
            input_tokens=estimate_text(json.dumps(request, default=str)),
            cached_input_tokens=0,
            output_tokens=max_tokens or OUTPUT_RESERVE_TOKENS,
        )
        return micros_of(dollars)


@contextlib.contextmanager
def bind(meter: Meter | None) -> Iterator[None]:
    """Model calls started from this thread's context (on the loop too) report to
    ``meter`` while the block runs."""
    token = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(token)


class _End:
    """Put on a stream's queue after its last event."""


class MeteredModel(Model):
    """Wraps a model named ``name``; reports each call to the bound meter."""

    def __init__(self, inner: Model, name: str) -> None:
        self._inner = inner
        self._name = name

    @property
    def inner(self) -> Model:
        return self._inner

    def _open(self, meter: Meter, system: Any, input: Any, settings: ModelSettings) -> int:
        reserve = meter.reservation(self._name, [system, input], settings.max_tokens)
        return meter._start(self._name, reserve)

    def _close(self, meter: Meter, call: int, usage: Any, error: BaseException | None) -> None:
        if usage is not None:
            charge = meter.price(self._name, usage)
        elif error is None or _not_billed(error):
            charge = Charge(self._name, 0)
        else:
            with meter._lock:
                reserved = meter._open.get(call, 0)
            charge = Charge(self._name, reserved, reserved=True)
        meter._finish(call, charge)

    async def get_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: ModelSettings,
        *args: Any,
        **kw: Any,
    ) -> ModelResponse:
        meter = _meter.get()
        if meter is None:
            return await self._inner.get_response(
                system_instructions, input, model_settings, *args, **kw
            )
        call = self._open(meter, system_instructions, input, model_settings)

        async def counted() -> ModelResponse:
            response: ModelResponse | None = None
            error: BaseException | None = None
            try:
                response = await self._inner.get_response(
                    system_instructions, input, model_settings, *args, **kw
                )
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                usage = response.usage if response is not None else None
                self._close(meter, call, usage, error)

        # Its own task: a run that stops waiting (cancelled) does not stop the count.
        return await asyncio.shield(_spawn(counted()))

    async def stream_response(
        self,
        system_instructions: Any,
        input: Any,
        model_settings: ModelSettings,
        *args: Any,
        **kw: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        meter = _meter.get()
        if meter is None:
            async for event in self._inner.stream_response(
                system_instructions, input, model_settings, *args, **kw
            ):
                yield event
            return
        call = self._open(meter, system_instructions, input, model_settings)
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            # Reads the whole stream even when nobody takes the events any more: the
            # usage comes last.
            usage: Any = None
            error: BaseException | None = None
            try:
                async for event in self._inner.stream_response(
                    system_instructions, input, model_settings, *args, **kw
                ):
                    if getattr(event, "type", None) == "response.completed":
                        usage = getattr(getattr(event, "response", None), "usage", None)
                    events.put_nowait(event)
            except BaseException as exc:
                error = exc
                events.put_nowait(exc)
            finally:
                self._close(meter, call, usage, error)
                events.put_nowait(_End())

        _spawn(read())
        while True:
            item = await events.get()
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def get_retry_advice(self, request: Any) -> Any:
        return self._inner.get_retry_advice(request)

    async def close(self) -> None:
        await self._inner.close()


_reading: set[asyncio.Task[Any]] = set()
"""Calls read on their own tasks, kept referenced until they end (the loop holds only
weak references to tasks)."""


def _spawn(coro: Any) -> asyncio.Task[Any]:
    task = asyncio.get_running_loop().create_task(coro)
    _reading.add(task)
    task.add_done_callback(_ended)
    return task


def _ended(task: asyncio.Task[Any]) -> None:
    _reading.discard(task)
    # A call the run stopped waiting for may still fail: its error was counted (the
    # meter) and is nobody's to raise; retrieved, it is not logged as "never retrieved".
    if not task.cancelled():
        task.exception()


def _not_billed(error: BaseException) -> bool:
    """The call generated nothing the provider bills: it answered with an error status,
    or the call was never sent."""
    return isinstance(error, openai.APIStatusError | ReservationSpent)
