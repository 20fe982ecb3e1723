"""How every Firestore call is bounded, in one place.

Each call gets an explicit timeout and a retry policy that gives up at that same
timeout: when nothing answers, the Firestore client would otherwise retry quietly for
minutes, and the caller must hear 503 within seconds instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry


class StoreUnavailable(Exception):
    """Firestore did not answer within the configured timeout."""


# What an outage looks like to the client: the retry gave up, or a transient status.
OUTAGE = (
    gexc.RetryError,
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Unknown,
    gexc.TooManyRequests,
)


def bounded_retry(timeout_seconds: float) -> gretry.Retry:
    """Transient errors retried with backoff, but never past ``timeout_seconds``."""
    return gretry.Retry(
        predicate=gretry.if_transient_error,
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=timeout_seconds,
    )


@contextmanager
def outage_as_unavailable() -> Iterator[None]:
    """Turns Firestore being unreachable or too slow into StoreUnavailable."""
    try:
        yield
    except OUTAGE as exc:
        raise StoreUnavailable(type(exc).__name__) from exc
