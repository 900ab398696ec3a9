"""The SQLite chat store's base: one engine for every concern, its lifecycle, keyset pages."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from chat_core import sqlite_engine
from chat_core.chatstore import (
    OutboxEntry,
    Page,
    decode_cursor,
    page_of,
)
from chat_core.chatstore.sqlite.schema import SCHEMA, on_open
from chat_core.sqlite_engine import SqliteEngine
from chat_core.timestamps import Clock, micros, utc_now

T = TypeVar("T")

PAGE = 200  # rows per read of the lifecycle jobs' scans
_IN_CHUNK = 500  # bound on "IN (?, ?, ...)" lists (SQLite allows 32766 variables; keep statements small)


def append_event(conn: sqlite3.Connection, event: OutboxEntry) -> None:
    """The one way an entry enters the outbox: inside the transaction of the change it announces."""
    conn.execute(
        "INSERT INTO outbox (event_id, created_at, body) VALUES (?, ?, ?)",
        (event.event_id, micros(event.created_at), msgspec.json.encode(event)),
    )


def chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


def placeholders(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


class SqliteBase:
    """The one SQLite engine (a writer, a pool of readers) every concern of the SQLite chat store works
    through, and its plumbing."""

    name = "sqlite"
    readiness_name = "sqlite"
    outage_code = "store_unavailable"
    outage_errors = sqlite_engine.OUTAGE_ERRORS

    def __init__(self, path: Path | str, *, readers: int = 4, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._db = SqliteEngine(
            path,
            schema=SCHEMA,
            readers=readers,
            on_open=lambda conn: on_open(conn, clock()),
            label="SQLite message store",
        )

    def is_outage(self, exc: Exception) -> bool:
        return sqlite_engine.is_outage(exc)

    async def _newest_first(
        self,
        select: str,
        params: tuple[object, ...],
        *,
        order: tuple[str, str],
        cursor: str | None,
        limit: int,
        decode: Callable[[sqlite3.Row], T],
        position: Callable[[T], tuple[dt.datetime, str]],
    ) -> Page[T]:
        """One page of ``select`` (a query ending in a WHERE clause), newest first on the (time, id)
        columns ``order``, after ``cursor``. Raises InvalidCursor."""
        after = decode_cursor(cursor) if cursor is not None else None
        time_column, id_column = order

        def run(conn: sqlite3.Connection) -> list[T]:
            sql, args = select, [*params]
            if after is not None:
                sql += f" AND ({time_column}, {id_column}) < (?, ?)"
                args += [micros(after[0]), after[1]]
            sql += f" ORDER BY {time_column} DESC, {id_column} DESC LIMIT ?"
            args.append(limit + 1)
            return [decode(row) for row in conn.execute(sql, args)]

        return page_of(await self._db.read(run), limit, position)

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        await self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())
