"""What routes do to a session without running a turn: read it, delete it, re-sign
one of its results. Each is scoped by the caller's principal: someone else's session
is absent (``ownership.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.base import errors
from agent.base.clock import utc_now
from agent.results.policy import OffloadPolicy, ResultLink
from agent.store.history import Deletion, History, HistoryStore
from agent.store.idempotency_records import IdempotencyStore
from agent.turn.ownership import require_owner
from agent.turn.store_errors import store_errors_as_api_errors


@dataclass(frozen=True)
class Sessions:
    """Session reads, deletes and re-signs for the routes, errors already mapped."""

    store: HistoryStore
    results: OffloadPolicy
    idempotency: IdempotencyStore

    def load(self, session_id: str, owner: str) -> History:
        """The caller's live history; 404 ``session_not_found`` otherwise."""
        with store_errors_as_api_errors():
            history = self.store.load(session_id, utc_now(), owner)
        if history is None:
            raise errors.session_not_found()
        return history

    def delete(self, session_id: str, owner: str) -> None:
        """Delete the caller's live session, its results and its keys' records; 404
        ``session_not_found`` when there is none."""
        with store_errors_as_api_errors():
            deletion = self.store.delete(session_id, utc_now(), owner)
        if deletion is Deletion.NOT_YOURS:
            raise errors.session_not_found()  # and its results are not ours to touch
        # After the documents: should this fail, a retried DELETE (404) still cleans up.
        self.results.delete_session(session_id)
        if deletion is not Deletion.DELETED:
            raise errors.session_not_found()
        self.idempotency.forget_session(session_id, owner)

    def resign_result(self, session_id: str, turn_id: str, owner: str) -> ResultLink:
        """A fresh signed URL for a stored result; 404 unless the caller owns the
        live session."""
        require_owner(self.store, session_id, owner)
        return self.results.resign(session_id, turn_id)
