"""The one clock: wall time in UTC, and how long to tell a caller to wait."""

from __future__ import annotations

import datetime as dt
import math


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def retry_after(until: dt.datetime, now: dt.datetime) -> int:
    """Seconds for a ``Retry-After`` header while something is held until ``until``.

    Rounded up (a client that waits exactly this long finds it free) and kept
    between 1 and 5: most turns take seconds, so suggest a short wait, never the
    whole lifetime of a hold.
    """
    return max(1, min(5, math.ceil((until - now).total_seconds())))
