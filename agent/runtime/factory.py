"""The user's agent: loaded from ``AGENT_FACTORY``, then fitted with what the service adds.

``AGENT_FACTORY=package.module:name`` names, in any importable package, either a function
``name(model, settings)`` that returns an Agents SDK ``Agent`` (it receives the model the
service built from the settings, and the ``Settings``), or an ``Agent`` object. Unset, it
is the demo agent, ``agent_examples.demo.agent:build_agent``, loaded the same way: the
service has no agent of its own.

What the service adds reaches every agent the run can hand off to (``reachable``), not
only the first: each gets the service's model where it has none (the model every call of
which is bounded by the turn's deadline and metered for cost and the budget), token usage
in streams, and its tools the service's bounds (``tools.fit_tools``: the tool timeout,
``APPROVAL_REQUIRED_TOOLS`` and the guard of approved calls). Agents are fitted in place:
a handoff holds its target by reference, so a copy would leave the target unfitted.

A factory that cannot be imported, raises, or returns something else stops start-up with
``FactoryError``, whose message is one line naming the factory and the exception's type
and message (``main.py`` logs it and exits non-zero, without a traceback).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from agents import Agent, Handoff, Model

from agent.base.settings import Settings
from agent.runtime.tools import fit_tools

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "agent_examples.demo.agent:build_agent"
"""The agent of a service with ``AGENT_FACTORY`` unset: the demo, an example like any other."""
_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_MAX_MESSAGE_CHARS = 300


class FactoryError(Exception):
    """The agent factory could not give an agent; the message is one line."""


def build_agent(settings: Settings, model: Model) -> Agent[Any]:
    """The agent the service runs: ``AGENT_FACTORY``'s, fitted (see the module's header).
    Raises FactoryError."""
    spec = settings.agent_factory or DEFAULT_FACTORY
    agent = _call(spec, model, settings)
    fit(agent, model, settings)
    return agent


def _call(spec: str, model: Model, settings: Settings) -> Agent[Any]:
    if not _SPEC.match(spec):
        raise FactoryError(f"AGENT_FACTORY={spec!r} is not package.module:name")
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        made = target if isinstance(target, Agent) else target(model, settings)
    except Exception as exc:  # any failure of the user's code is the factory's
        raise FactoryError(f"AGENT_FACTORY={spec} failed: {_one_line(exc)}") from None
    if not isinstance(made, Agent):
        kind = type(made).__name__
        raise FactoryError(f"AGENT_FACTORY={spec} returned a {kind}, not an agents.Agent")
    return made


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[: _MAX_MESSAGE_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reachable(agent: Agent[Any]) -> Iterator[Agent[Any]]:
    """``agent`` and every agent reachable from it by handoffs, breadth first, each once
    (the graph the SDK's RunState restores a paused run against)."""
    queue: deque[Agent[Any]] = deque([agent])
    seen: set[int] = set()
    while queue:
        current = queue.popleft()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for item in current.handoffs:
            target = _target(item)
            if target is not None:
                queue.append(target)


def _target(item: Any) -> Agent[Any] | None:
    if isinstance(item, Agent):
        return item
    if isinstance(item, Handoff):
        # handoff() keeps its agent by weak reference only (the SDK's own graph walk
        # reads it the same way); a Handoff made by hand has none and is a leaf.
        ref = getattr(item, "_agent_ref", None)
        target = ref() if callable(ref) else None
        return target if isinstance(target, Agent) else None
    return None


def fit(agent: Agent[Any], model: Model, settings: Settings) -> None:
    """Give every reachable agent what the service adds (the module's header). Idempotent:
    an ``Agent`` object named by ``AGENT_FACTORY`` is fitted again by each service built."""
    for each in reachable(agent):
        if each.model is None:
            each.model = model
        elif each.model is not model:
            log.warning(
                "agent %r brings its own model: its calls are not bounded by the turn's"
                " deadline, nor priced or charged to the budget",
                each.name,
            )
        if each.model_settings.include_usage is None:
            # Compatible servers send token usage in a stream only when asked; without it
            # a streamed turn would report zero tokens where the same turn does not.
            each.model_settings = dataclasses.replace(each.model_settings, include_usage=True)
        each.tools = fit_tools(each.tools, settings)
