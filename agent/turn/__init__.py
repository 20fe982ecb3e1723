"""One turn of a conversation: claim the session, run the agent, deliver the answer,
commit; Idempotency-Key and ownership on top.

Imports ``agent.store``, ``agent.results``, ``agent.runtime`` and ``agent.base``.
"""
