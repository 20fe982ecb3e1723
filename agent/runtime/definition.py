"""The agent, defined in one place: edit this file to change what the service is."""

from __future__ import annotations

from agents import Agent, Model, ModelSettings, Tool

from agent.base.settings import Settings
from agent.runtime.tools import build_tools


def build_agent(settings: Settings, model: Model) -> Agent[None]:
    """The agent the service runs: its name, instructions, model and tools."""
    return Agent(
        name=settings.agent_name,
        instructions=settings.agent_instructions,
        model=model,
        tools=list[Tool](build_tools(settings)),
        # Compatible servers send token usage in a stream only when asked; without it
        # a streamed turn would report zero tokens where the same turn unstreamed does not.
        model_settings=ModelSettings(include_usage=True),
    )
