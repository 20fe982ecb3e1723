"""The demo agent, built by a factory like any user's agent (``AGENT_FACTORY``).

The service calls ``build_agent(model, settings)`` once at start-up with the model it
built from the settings (OpenAI, a compatible server, or Vertex AI) and uses the
``Agent`` it returns. Its name and instructions come from ``AGENT_NAME`` and
``AGENT_INSTRUCTIONS``, so the demo can be renamed without code.
"""

from __future__ import annotations

from agents import Agent, Model, Tool

from agent.base.settings import Settings
from agent.runtime.run_context import RunContext
from agent_examples.demo.tools import demo_tools


def build_agent(model: Model, settings: Settings) -> Agent[RunContext]:
    """The demo agent: its name, instructions, model and tools."""
    return Agent[RunContext](
        name=settings.agent_name,
        instructions=settings.agent_instructions,
        model=model,
        tools=list[Tool](demo_tools(settings.outbox_path)),
    )
