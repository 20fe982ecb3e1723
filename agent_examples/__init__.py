"""Agents written the way a user writes one, outside the service's own package.

``AGENT_FACTORY`` names a function (or an ``Agent``) in any importable package; unset, the
service runs ``agent_examples.demo.agent:build_agent``, loaded the same way
(``agent/runtime/factory.py``). Copy this package to start your own.
"""
