"""What an agent's run ended with, beyond its text: a guardrail that tripped, or an answer
that is structured output (``output_type``)."""

from __future__ import annotations

from typing import Any

from agents import (
    Agent,
    AgentOutputSchemaBase,
    InputGuardrailTripwireTriggered,
    OutputGuardrailTripwireTriggered,
    ToolInputGuardrailTripwireTriggered,
    ToolOutputGuardrailTripwireTriggered,
)


def guardrail_of(exc: BaseException) -> tuple[str, str] | None:
    """(the guardrail's name, its kind) when ``exc`` is a guardrail's tripwire: ``input``,
    ``output``, ``tool_input`` or ``tool_output``; else None."""
    if isinstance(exc, InputGuardrailTripwireTriggered):
        return exc.guardrail_result.guardrail.get_name(), "input"
    if isinstance(exc, OutputGuardrailTripwireTriggered):
        return exc.guardrail_result.guardrail.get_name(), "output"
    if isinstance(exc, ToolInputGuardrailTripwireTriggered):
        return exc.guardrail.get_name(), "tool_input"
    if isinstance(exc, ToolOutputGuardrailTripwireTriggered):
        return exc.guardrail.get_name(), "tool_output"
    return None


def structured_output(agent: Agent[Any]) -> bool:
    """Whether ``agent`` answers with structured output (an ``output_type`` other than
    text), whose final output the SDK has validated against that type."""
    kind: Any = agent.output_type
    if kind is None or kind is str:
        return False
    if isinstance(kind, AgentOutputSchemaBase):
        return not kind.is_plain_text()
    return True
