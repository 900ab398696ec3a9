"""Times as the stores keep them: microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

__all__ = ["EPOCH", "Clock", "from_micros", "micros", "utc_now"]

# What an adapter asks for the time (tests may hand one a fixed or stepped clock).
Clock = Callable[[], dt.datetime]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def micros(value: dt.datetime) -> int:
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> dt.datetime:
    return EPOCH + value * _MICROSECOND


def utc_now() -> dt.datetime:
    """The real clock: now, in UTC."""
    return dt.datetime.now(dt.UTC)
