"""Two agents and a handoff, a tool that uses the run context, a tool that needs approval,
an input and an output guardrail, and an agent with structured output: written as a
user writes them, against the Agents SDK and ``agent.runtime.run_context`` only.

``AGENT_FACTORY=tests.user_agent.app:build_agent`` runs it.
"""

from __future__ import annotations

from typing import Any

from agents import (
    Agent,
    GuardrailFunctionOutput,
    Model,
    RunContextWrapper,
    function_tool,
    input_guardrail,
    output_guardrail,
)
from pydantic import BaseModel

from agent.base.settings import Settings
from agent.runtime.run_context import RunContext

SENT: list[dict[str, Any]] = []
"""What ``send_message`` sent, in order, and for whom (the tests read it)."""


@function_tool
async def whoami(ctx: RunContextWrapper[RunContext]) -> str:
    """Say who is asking: the caller, the conversation and the request."""
    run = ctx.context
    return f"principal={run.principal} session={run.session_id} request={run.request_id}"


@function_tool(needs_approval=True)
async def send_message(ctx: RunContextWrapper[RunContext], to: str, text: str) -> str:
    """Send a short text message to someone. Needs a person's approval first.

    Args:
        to: who receives it.
        text: the message.
    """
    run = ctx.context
    SENT.append({"to": to, "text": text, "by": run.principal, "request": run.request_id})
    return f"sent to {to}"


@input_guardrail(name="no_forbidden_words")
async def no_forbidden_words(
    ctx: RunContextWrapper[RunContext], agent: Agent[RunContext], message: Any
) -> GuardrailFunctionOutput:
    """Refuses a request that says "forbidden", before the agent answers it."""
    text = message if isinstance(message, str) else str(message)
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="forbidden" in text)


@output_guardrail(name="no_secrets_out")
async def no_secrets_out(
    ctx: RunContextWrapper[RunContext], agent: Agent[RunContext], output: Any
) -> GuardrailFunctionOutput:
    """Refuses an answer that gives out a SECRET (here after the model was called)."""
    return GuardrailFunctionOutput(output_info=None, tripwire_triggered="SECRET" in str(output))


def build_agent(model: Model, settings: Settings) -> Agent[RunContext]:
    """The factory: a triage agent that hands messages to send off to ``outbox``."""
    outbox = Agent[RunContext](
        name="outbox",
        instructions="You send messages for the user.",
        model=model,
        tools=[send_message],
    )
    return Agent[RunContext](
        name="triage",
        instructions="Answer, or hand sending messages to the outbox agent.",
        model=model,
        tools=[whoami],
        handoffs=[outbox],
        input_guardrails=[no_forbidden_words],
        output_guardrails=[no_secrets_out],
    )


class Summary(BaseModel):
    """What the structured agent answers."""

    reply: str
    messages: int


def build_structured(model: Model, settings: Settings) -> Agent[RunContext]:
    """An agent whose answer is a ``Summary``, validated, not free text."""
    return Agent[RunContext](
        name="structured", instructions="Summarise.", model=model, output_type=Summary
    )


AGENT = Agent[RunContext](
    name="triage",
    instructions="An agent object rather than a factory; the service gives it its model.",
    tools=[whoami],
    handoffs=[Agent[RunContext](name="outbox", instructions="Send.", tools=[send_message])],
)


def broken_factory(model: Model, settings: Settings) -> Agent[RunContext]:
    raise RuntimeError("the factory could not reach\nits configuration")


def not_an_agent(model: Model, settings: Settings) -> str:
    return "an agent"
