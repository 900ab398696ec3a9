"""Push tokens in SQLite (``devices``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from chat_core.chatstore import (
    Device,
    DeviceStore,
)
from chat_core.chatstore.sqlite.base import SqliteBase, chunks, placeholders
from chat_core.timestamps import from_micros, micros


class SqliteDevices(SqliteBase, DeviceStore):
    async def put_device(self, device: Device, *, max_devices: int | None = None) -> list[str]:
        def upsert(conn: sqlite3.Connection) -> list[str]:
            conn.execute(
                "INSERT INTO devices (token, user_id, platform, updated_at, provider) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id, platform = excluded.platform,"
                " updated_at = excluded.updated_at, provider = excluded.provider",
                (device.token, device.user_id, device.platform, micros(device.updated_at), device.provider),
            )
            if max_devices is None:
                return []
            # In the same write transaction as the insert: concurrent registrations queue on it.
            evicted = [
                row[0]
                for row in conn.execute(
                    "SELECT token FROM devices WHERE user_id = ?"
                    " ORDER BY token = ? DESC, updated_at DESC, token DESC LIMIT -1 OFFSET ?",
                    (device.user_id, device.token, max_devices),
                )
            ]
            conn.executemany("DELETE FROM devices WHERE token = ?", [(token,) for token in evicted])
            return evicted

        return await self._db.write(upsert)

    async def delete_device(self, user_id: str, token: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM devices WHERE token = ? AND user_id = ?", (token, user_id))
            return cursor.rowcount > 0

        return await self._db.write(delete)

    async def devices_for(self, user_ids: Collection[str]) -> dict[str, list[Device]]:
        users = list(dict.fromkeys(user_ids))

        def select(conn: sqlite3.Connection) -> dict[str, list[Device]]:
            found: dict[str, list[Device]] = {}
            for chunk in chunks(users):
                sql = (
                    "SELECT token, user_id, platform, updated_at, provider FROM devices"  # noqa: S608
                    f" WHERE user_id IN ({placeholders(chunk)}) ORDER BY user_id, token"
                )
                for row in conn.execute(sql, chunk):
                    found.setdefault(row["user_id"], []).append(
                        Device(
                            token=row["token"],
                            user_id=row["user_id"],
                            platform=row["platform"],
                            updated_at=from_micros(row["updated_at"]),
                            provider=row["provider"] or "fcm",
                        )
                    )
            return found

        return await self._db.read(select)
