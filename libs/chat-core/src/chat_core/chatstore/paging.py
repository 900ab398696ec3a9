"""Keyset pages: newest first on (time, id), and the opaque cursor that resumes one."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from chat_core.timestamps import from_micros, micros

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], frozen=True):
    items: list[T]
    next_cursor: str | None  # opaque; None on the last page


def page_of(rows: list[T], limit: int, position: Callable[[T], tuple[dt.datetime, str]]) -> Page[T]:
    """The page of a keyset query that fetched ``limit + 1`` rows, newest first: the extra row only says
    there is more, and the cursor is the (time, id) ``position`` of the last row shown."""
    items = rows[:limit]
    next_cursor = encode_cursor(*position(items[-1])) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


class InvalidCursor(ValueError):
    """A cursor that is no position (not ``CURSOR_PATTERN``)."""


# A cursor is a keyset position, ``{microseconds since the epoch}.{id}`` (the id of the last row shown: a
# message or conversation id). Any value of this shape is a position a page can start after, so the
# OpenAPI document's pattern is the whole rule: a schema-valid cursor is never refused. Times past the
# last representable one mean "from the newest".
CURSOR_PATTERN = re.compile(r"^([0-9]{1,18})\.([A-Za-z0-9][A-Za-z0-9_-]{0,63})(?!\n)$")
_LAST_MICROS = micros(dt.datetime.max.replace(tzinfo=dt.UTC))


def encode_cursor(position: dt.datetime, key: str) -> str:
    """The cursor of keyset pagination on (time, id) after ``position``, ``key`` (both adapters use it)."""
    return f"{max(micros(position), 0)}.{key}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """(time, id) of a cursor of ``CURSOR_PATTERN``; raises InvalidCursor."""
    match = CURSOR_PATTERN.fullmatch(cursor)
    if match is None:
        raise InvalidCursor("a cursor is the nextCursor of a page: {microseconds}.{id}")
    stamp, key = match.groups()
    return from_micros(min(int(stamp), _LAST_MICROS)), key
