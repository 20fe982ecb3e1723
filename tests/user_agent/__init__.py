"""A user's own agent package, outside ``agent/``: what the README's "Make it yours" shows
and ``tests/test_user_agent.py`` runs through the service (``AGENT_FACTORY``)."""
