"""The event outbox in SQLite (``outbox``): claims are leases taken in the single writer's transaction."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection

import msgspec

from chat_core.chatstore import (
    OutboxEntry,
    OutboxStore,
    legacy_outbox_fields,
)
from chat_core.chatstore.sqlite.base import SqliteBase, chunks, placeholders
from chat_core.timestamps import from_micros, micros


def _outbox_entry(row: sqlite3.Row) -> OutboxEntry:
    fields = legacy_outbox_fields(msgspec.json.decode(row["body"]), row["event_id"])
    return msgspec.convert(fields, OutboxEntry)


class SqliteOutbox(SqliteBase, OutboxStore):
    async def pending_outbox(self, *, older_than: float, limit: int) -> list[OutboxEntry]:
        cutoff = micros(self._clock()) - int(older_than * 1_000_000)

        def select(conn: sqlite3.Connection) -> list[OutboxEntry]:
            rows = conn.execute(
                "SELECT event_id, body FROM outbox WHERE created_at < ?"
                " ORDER BY created_at, event_id LIMIT ?",
                (cutoff, limit),
            )
            return [_outbox_entry(row) for row in rows]

        return await self._db.read(select)

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        now = micros(self._clock())
        cutoff = now - int(older_than * 1_000_000)
        until = now + int(lease.total_seconds() * 1_000_000)

        def claim(conn: sqlite3.Connection) -> list[OutboxEntry]:
            # One write transaction (the engine's single writer): select and mark, nobody in between.
            rows = conn.execute(
                "SELECT event_id, body FROM outbox WHERE created_at < ?"
                " AND (leased_until IS NULL OR leased_until <= ?)"
                " ORDER BY created_at, event_id LIMIT ?",
                (cutoff, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET leased_until = ? WHERE event_id = ?", [(until, row[0]) for row in rows]
            )
            return [_outbox_entry(row) for row in rows]

        return await self._db.write(claim)

    async def release_outbox(self, event_ids: Collection[str]) -> None:
        ids = list(dict.fromkeys(event_ids))

        def release(conn: sqlite3.Connection) -> None:
            for chunk in chunks(ids):
                conn.execute(
                    f"UPDATE outbox SET leased_until = NULL WHERE event_id IN ({placeholders(chunk)})",  # noqa: S608
                    chunk,
                )

        if ids:
            await self._db.write(release)

    async def delete_outbox(self, event_ids: Collection[str]) -> None:
        ids = list(dict.fromkeys(event_ids))

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in chunks(ids):
                conn.execute(f"DELETE FROM outbox WHERE event_id IN ({placeholders(chunk)})", chunk)  # noqa: S608

        if ids:
            await self._db.write(delete)

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        def select(conn: sqlite3.Connection) -> tuple[int, dt.datetime | None]:
            count, oldest = conn.execute("SELECT count(*), min(created_at) FROM outbox").fetchone()
            return int(count), None if oldest is None else from_micros(oldest)

        return await self._db.read(select)
