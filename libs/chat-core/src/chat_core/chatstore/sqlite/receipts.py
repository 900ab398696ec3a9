"""Push receipts in SQLite (``push_receipts``): a claim is a lease, a done push is never claimed again."""

from __future__ import annotations

import datetime as dt
import sqlite3

from chat_core.chatstore import (
    PushClaim,
    PushReceiptStore,
)
from chat_core.chatstore.sqlite.base import SqliteBase
from chat_core.timestamps import from_micros, micros


class SqlitePushReceipts(SqliteBase, PushReceiptStore):
    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        now = micros(self._clock())
        until = now + int(lease.total_seconds() * 1_000_000)

        def claim(conn: sqlite3.Connection) -> PushClaim:
            # One statement: a new pair is inserted; a known one is taken over only if its claim is
            # neither done (NULL) nor within its lease.
            cursor = conn.execute(
                "INSERT INTO push_receipts (notification_id, device_token, claimed_at, leased_until)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (notification_id, device_token) DO UPDATE"
                " SET claimed_at = excluded.claimed_at, leased_until = excluded.leased_until"
                " WHERE push_receipts.leased_until IS NOT NULL AND push_receipts.leased_until <= ?",
                (notification_id, device_token, now, until, now),
            )
            if cursor.rowcount == 1:
                return PushClaim(state="claimed", leased_until=from_micros(until))
            (held,) = conn.execute(
                "SELECT leased_until FROM push_receipts WHERE notification_id = ? AND device_token = ?",
                (notification_id, device_token),
            ).fetchone()
            if held is None:
                return PushClaim(state="done")
            return PushClaim(state="leased", leased_until=from_micros(held))

        return await self._db.write(claim)

    async def complete_push(self, notification_id: str, device_token: str) -> None:
        def complete(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO push_receipts (notification_id, device_token, claimed_at, leased_until)"
                " VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (notification_id, device_token) DO UPDATE SET leased_until = NULL",
                (notification_id, device_token, micros(self._clock())),
            )

        await self._db.write(complete)

    async def release_push(self, notification_id: str, device_token: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM push_receipts"
                " WHERE notification_id = ? AND device_token = ? AND leased_until IS NOT NULL",
                (notification_id, device_token),
            )

        await self._db.write(release)
