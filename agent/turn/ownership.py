"""Whose conversation is whose: the errors and the check that routes share.

The store records each session's owner (``agent/store/history.py``) and hides other
principals' sessions. To anyone but its owner a live session looks absent: reads
and deletes get 404 ``session_not_found``, exactly as for an id never used. The one
place it cannot look absent is creating a session under that id, which would
succeed for a free id; there the caller gets 409 ``session_id_taken`` (``errors.py``): the id is
in use, pick another (server-made ids never collide). That reveals only that the
id is taken, never whose or what it holds, and a 404 would reveal the same while
misleading a client that meant to create a session.
"""

from __future__ import annotations

from agent.base import errors
from agent.base.clock import utc_now
from agent.store.backend import HistoryBackend
from agent.turn.store_errors import store_errors_as_api_errors


def require_owner(store: HistoryBackend, session_id: str, principal: str) -> str | None:
    """404 ``session_not_found`` unless ``principal`` owns the live session
    ``session_id``; for routes that act on a session without running a turn (such
    as re-signing a stored result). The session's generation (its current life).
    Costs one document read."""
    with store_errors_as_api_errors():
        found = store.info(session_id, utc_now())
    if found is None or found.owner is None or found.owner != principal:
        raise errors.session_not_found()
    return found.generation
