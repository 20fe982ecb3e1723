"""What routes do to a session without running a turn: read it, delete it, re-sign
one of its results. Each is scoped by the caller's principal: someone else's session
is absent (``ownership.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.base import errors
from agent.base.clock import utc_now
from agent.results.policy import OffloadPolicy, ResultLink
from agent.store.backend import HistoryBackend, IdempotencyBackend, ToolRunBackend
from agent.store.history import Deletion, History
from agent.turn.ownership import require_owner
from agent.turn.store_errors import store_errors_as_api_errors


@dataclass(frozen=True)
class Sessions:
    """Session reads, deletes and re-signs for the routes, errors already mapped."""

    store: HistoryBackend
    results: OffloadPolicy
    idempotency: IdempotencyBackend
    tool_runs: ToolRunBackend

    def load(self, session_id: str, owner: str) -> History:
        """The caller's live history; 404 ``session_not_found`` otherwise."""
        with store_errors_as_api_errors():
            history = self.store.load(session_id, utc_now(), owner)
        if history is None:
            raise errors.session_not_found()
        return history

    def delete(self, session_id: str, owner: str) -> None:
        """Delete the caller's live session, its results and its keys' records; 404
        ``session_not_found`` when there is none, 409 ``session_busy`` while a turn
        runs on it (also a session's first turn, during which a read says 404).

        Only what belonged to the deleted life goes: result objects of no current life
        (the deleted one's, and orphans) and the key and tool-run records of the deleted
        generation. A session re-created under the id meanwhile keeps its files and
        records."""
        with store_errors_as_api_errors():
            deleted = self.store.delete(session_id, utc_now(), owner)
        if deleted.outcome is Deletion.NOT_YOURS:
            raise errors.session_not_found()  # and its results are not ours to touch
        # After the documents: should this fail, a retried DELETE (404) still sweeps.
        self.results.sweep(session_id, lambda: self._current_generation(session_id))
        # Whatever the answer, the life the delete removed (an expired one's too) is
        # cleaned: its keys' records and tool runs must not outlive it.
        self.idempotency.forget_session(session_id, owner, deleted.generation)
        if deleted.generation is not None:
            with store_errors_as_api_errors():
                self.tool_runs.forget_session(session_id, deleted.generation)
        if deleted.outcome is not Deletion.DELETED:
            raise errors.session_not_found()

    def resign_result(self, session_id: str, turn_id: str, owner: str) -> ResultLink:
        """A fresh signed URL for a stored result of the caller's live session; 404
        unless it belongs to this life of the session."""
        generation = require_owner(self.store, session_id, owner)
        return self.results.resign(session_id, turn_id, generation)

    def _current_generation(self, session_id: str) -> str | None:
        with store_errors_as_api_errors():
            return self.store.current_generation(session_id, utc_now())
