"""Who is calling: the authentication modes and Google ID-token verification.

Imports ``agent.base`` only; used by the HTTP layer and the wiring, nothing else.
"""
