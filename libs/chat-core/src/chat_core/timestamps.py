"""Times as the stores keep them: microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import datetime as dt

__all__ = ["EPOCH", "from_micros", "micros"]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def micros(value: dt.datetime) -> int:
    return (value - EPOCH) // _MICROSECOND


def from_micros(value: int) -> dt.datetime:
    return EPOCH + value * _MICROSECOND
