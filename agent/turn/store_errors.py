"""The store's failures as API errors, in one place.

Every route and turn step that calls the store does so inside
``store_errors_as_api_errors()``, so an outage is the same 503, and a held session the
same 409, wherever it happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agent.base import errors
from agent.store.calls import StoreUnavailable
from agent.store.history import SessionBusy, SessionTaken


def api_error_of(exc: BaseException) -> errors.ApiError | None:
    """The API error a store failure stands for; None for anything else."""
    if isinstance(exc, StoreUnavailable):
        return errors.storage_unavailable()
    if isinstance(exc, SessionBusy):
        return errors.session_busy(exc.retry_after)
    if isinstance(exc, SessionTaken):
        return errors.session_id_taken()
    return None


@contextmanager
def store_errors_as_api_errors() -> Iterator[None]:
    try:
        yield
    except (StoreUnavailable, SessionBusy, SessionTaken) as exc:
        error = api_error_of(exc)
        assert error is not None
        raise error from None
