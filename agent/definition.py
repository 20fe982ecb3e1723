"""The agent, defined in one place: edit this file to change what the service is."""

from __future__ import annotations

from agents import Agent, Model

from .settings import Settings
from .tools import TOOLS


def build_agent(settings: Settings, model: Model) -> Agent[None]:
    return Agent(
        name=settings.agent_name,
        instructions=settings.agent_instructions,
        model=model,
        tools=list(TOOLS),
    )
