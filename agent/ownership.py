"""Whose conversation is whose: the errors and the check that routes share.

The store records each session's owner (``history_store.py``) and hides other
principals' sessions. To anyone but its owner a live session looks absent: reads
and deletes get 404 ``session_not_found``, exactly as for an id never used. The one
place it cannot look absent is creating a session under that id, which would
succeed for a free id; there the caller gets 409 ``session_id_taken``: the id is
in use, pick another (server-made ids never collide). That reveals only that the
id is taken, never whose or what it holds, and a 404 would reveal the same while
misleading a client that meant to create a session.
"""

from __future__ import annotations

from . import errors
from .firestore_calls import StoreUnavailable
from .firestore_session import utc_now
from .history_store import HistoryStore


def session_id_taken() -> errors.ApiError:
    return errors.ApiError(
        409,
        "session_id_taken",
        "This session id is in use by another caller; choose another or omit it.",
    )


def require_owner(store: HistoryStore, session_id: str, principal: str) -> None:
    """404 ``session_not_found`` unless ``principal`` owns the live session
    ``session_id``; for routes that act on a session without running a turn (such
    as re-signing a stored result). Costs one document read."""
    try:
        owner = store.owner_of(session_id, utc_now())
    except StoreUnavailable:
        raise errors.storage_unavailable() from None
    if owner is None or owner != principal:
        raise errors.session_not_found()
