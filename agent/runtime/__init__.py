"""The agent and how it runs: the user's agent loaded from ``AGENT_FACTORY`` and its tools
fitted with the service's bounds, the run context tools get, the model client, deadlines,
the process's event loop, streamed runs, the SDK's traces as OpenTelemetry spans.

Imports ``agent.base`` only (and the Agents SDK).
"""
