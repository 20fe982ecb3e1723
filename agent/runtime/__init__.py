"""The agent and how it runs: its definition and tools, the model client, deadlines,
the process's event loop, streamed runs, the SDK's traces as OpenTelemetry spans.

Imports ``agent.base`` only (and the Agents SDK).
"""
