"""The store's failures as API errors, in one place.

Every route and turn step that calls the store does so inside
``store_errors_as_api_errors()``, so an outage is the same 503, and a held session the
same 409, wherever it happens.

A turn's commit that Firestore failed is 503 ``storage_unavailable`` whether the
store fenced it (``CommitFailed``: not stored, and never will be) or could not find
out its outcome in time (``CommitUnknown``): the caller may retry either way, and
only in the second case does the turn keep whatever it uploaded. A commit that was
refused because the claim had lapsed (``ClaimLost``) is the turn running out of time:
504, mapped with the other timeouts in ``runner.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.base import errors
from agent.store.calls import StoreUnavailable
from agent.store.history import CommitFailed, CommitUnknown, SessionBusy, SessionTaken
from agent.store.paused_runs import PauseChanged, RunPaused, StateTooLarge


def api_error_of(exc: BaseException) -> errors.ApiError | None:
    """The API error a store failure stands for; None for anything else. A store that
    failed inside a tool (the tool-run guard) reaches here wrapped by the SDK
    (``UserError`` from the store's error): the cause decides."""
    cause = exc.__cause__
    while cause is not None and not isinstance(exc, StoreUnavailable):
        if isinstance(cause, StoreUnavailable):
            return errors.storage_unavailable()
        cause = cause.__cause__
    if isinstance(exc, StoreUnavailable | CommitFailed | CommitUnknown):
        return errors.storage_unavailable()
    if isinstance(exc, SessionBusy):
        return errors.session_busy(exc.retry_after)
    if isinstance(exc, SessionTaken):
        return errors.session_id_taken()
    if isinstance(exc, RunPaused):
        return errors.approval_pending(exc.pending, exc.pause_id)
    if isinstance(exc, PauseChanged):
        return errors.approval_not_pending()
    if isinstance(exc, StateTooLarge):
        return errors.approval_state_too_large()
    return None


@contextmanager
def store_errors_as_api_errors() -> Iterator[None]:
    try:
        yield
    except (StoreUnavailable, SessionBusy, SessionTaken, RunPaused, PauseChanged) as exc:
        error = api_error_of(exc)
        assert error is not None
        raise error from None
