"""Messages in SQLite (``messages``) and the objects they back (``image_refs``)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence

import msgspec

from chat_core.chatstore import (
    ConversationNotFound,
    ImageMetadata,
    Message,
    MessageDeleted,
    MessageEdit,
    MessageStore,
    ObjectAlreadyUsed,
    OutboxEntry,
    Page,
    StoredImage,
    created_event,
    deleted_event,
    edited,
    event_done,
    finished,
)
from chat_core.chatstore.sqlite.base import PAGE, SqliteBase, append_event, chunks, placeholders
from chat_core.timestamps import micros


def _select_message(conn: sqlite3.Connection, conversation_id: str, message_id: str) -> Message | None:
    row = conn.execute(
        "SELECT body FROM messages WHERE conversation_id = ? AND message_id = ?",
        (conversation_id, message_id),
    ).fetchone()
    return None if row is None else msgspec.json.decode(row[0], type=Message)


def _update_message(conn: sqlite3.Connection, conversation_id: str, message: Message) -> None:
    conn.execute(
        "UPDATE messages SET body = ? WHERE conversation_id = ? AND message_id = ?",
        (msgspec.json.encode(message), conversation_id, message.message_id),
    )


class SqliteMessages(SqliteBase, MessageStore):
    async def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        position = (-1, "")
        cutoff = micros(before)
        while True:
            rows = await self._db.read(
                lambda conn, position=position: conn.execute(
                    "SELECT timestamp, message_id, body FROM messages WHERE conversation_id = ?"
                    " AND timestamp < ? AND (timestamp, message_id) > (?, ?)"
                    " ORDER BY timestamp, message_id LIMIT ?",
                    (conversation_id, cutoff, *position, PAGE),
                ).fetchall()
            )
            for row in rows:
                yield msgspec.json.decode(row["body"], type=Message)
            if len(rows) < PAGE:
                return
            position = (rows[-1]["timestamp"], rows[-1]["message_id"])

    async def sent_by(self, user_id: str) -> AsyncIterator[tuple[str, Message]]:
        position: tuple[int, str, str] = (-1, "", "")
        while True:
            rows = await self._db.read(
                lambda conn, position=position: conn.execute(
                    "SELECT timestamp, conversation_id, message_id, body FROM messages WHERE sender_id = ?"
                    " AND (timestamp, conversation_id, message_id) > (?, ?, ?)"
                    " ORDER BY timestamp, conversation_id, message_id LIMIT ?",
                    (user_id, *position, PAGE),
                ).fetchall()
            )
            for row in rows:
                yield row["conversation_id"], msgspec.json.decode(row["body"], type=Message)
            if len(rows) < PAGE:
                return
            position = (rows[-1]["timestamp"], rows[-1]["conversation_id"], rows[-1]["message_id"])

    async def create_message(
        self,
        conversation_id: str,
        message: Message,
        *,
        object_key: str | None = None,
        object_etag: str | None = None,
        trace: Mapping[str, str] | None = None,
        conversation_checked: bool = False,  # the check is free inside the write transaction
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool]:
        entry = created_event(
            conversation_id,
            message,
            trace=trace,
            object_key=object_key,
            object_etag=object_etag,
            images=images,
        )
        referenced = list(dict.fromkeys([*([object_key] if object_key else []), *(i.key for i in images)]))

        def insert(conn: sqlite3.Connection) -> tuple[Message, bool]:
            exists = conn.execute("SELECT 1 FROM conversations WHERE conversation_id = ?", (conversation_id,))
            if exists.fetchone() is None:
                raise ConversationNotFound(conversation_id)
            row = conn.execute(
                "SELECT body FROM messages WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, message.message_id),
            ).fetchone()
            if row is not None:
                return msgspec.json.decode(row[0], type=Message), False
            for stored_key in referenced:
                holder = conn.execute(
                    "SELECT message_id FROM image_refs WHERE stored_key = ?", (stored_key,)
                ).fetchone()
                if holder is not None:
                    raise ObjectAlreadyUsed(holder[0])
            conn.executemany(
                "INSERT INTO image_refs (stored_key, conversation_id, message_id) VALUES (?, ?, ?)",
                [(stored_key, conversation_id, message.message_id) for stored_key in referenced],
            )
            conn.execute(
                "INSERT INTO messages (conversation_id, message_id, timestamp, body, sender_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    message.message_id,
                    micros(message.timestamp),
                    msgspec.json.encode(message),
                    message.sender_id,
                ),
            )
            append_event(conn, entry)
            return message, True

        return await self._db.write(insert)

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        return await self._db.read(_select_message, conversation_id, message_id)

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        *,
        deleted_by: str,
        deleted_at: dt.datetime,
        object_key: str | None = None,
        trace: Mapping[str, str] | None = None,
        images: Sequence[StoredImage] = (),
    ) -> tuple[Message, bool] | None:
        def delete(conn: sqlite3.Connection) -> tuple[Message, bool] | None:
            current = _select_message(conn, conversation_id, message_id)
            if current is None:
                return None
            if current.deleted:
                return current, False
            tombstone = current.tombstone(deleted_by, deleted_at)
            _update_message(conn, conversation_id, tombstone)
            # Its message.created, if still pending, would announce, notify and process what is gone.
            conn.execute("DELETE FROM outbox WHERE event_id = ?", (message_id,))
            append_event(
                conn,
                deleted_event(conversation_id, tombstone, object_key=object_key, trace=trace, images=images),
            )
            return tombstone, True

        return await self._db.write(delete)

    async def edit_message(
        self,
        conversation_id: str,
        message_id: str,
        edit: MessageEdit,
        *,
        edited_at: dt.datetime,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        def update(conn: sqlite3.Connection) -> Message | None:
            current = _select_message(conn, conversation_id, message_id)
            if current is None:
                return None
            if current.deleted:
                raise MessageDeleted(message_id)
            changed = edited(current, edit, edited_at)
            _update_message(conn, conversation_id, changed)
            if event is not None:
                append_event(conn, event_done(event, changed))
            return changed

        return await self._db.write(update)

    async def image_message(self, conversation_id: str, stored_key: str) -> Message | None:
        def select(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(
                "SELECT m.body FROM image_refs r JOIN messages m"
                " ON m.conversation_id = r.conversation_id AND m.message_id = r.message_id"
                " WHERE r.stored_key = ? AND r.conversation_id = ?",
                (stored_key, conversation_id),
            ).fetchone()
            return None if row is None else msgspec.json.decode(row[0], type=Message)

        return await self._db.read(select)

    async def finish_image(
        self,
        conversation_id: str,
        message_id: str,
        metadata: ImageMetadata,
        *,
        event: OutboxEntry | None = None,
    ) -> Message | None:
        def update(conn: sqlite3.Connection) -> Message | None:
            current = _select_message(conn, conversation_id, message_id)
            updated = None if current is None else finished(current, metadata)
            if updated is not None:
                _update_message(conn, conversation_id, updated)
                if event is not None:
                    append_event(conn, event_done(event, updated))
            return updated

        return await self._db.write(update)

    async def list_messages(
        self, conversation_id: str, *, limit: int, before: str | None = None
    ) -> Page[Message]:
        # Keyset pagination on (timestamp, id): a new message is newer than any cursor handed out, so it
        # can never shift what an older page holds.
        return await self._newest_first(
            "SELECT body FROM messages WHERE conversation_id = ?",
            (conversation_id,),
            order=("timestamp", "message_id"),
            cursor=before,
            limit=limit,
            decode=lambda row: msgspec.json.decode(row[0], type=Message),
            position=lambda m: (m.timestamp, m.message_id),
        )

    async def mark_read(
        self, conversation_id: str, message_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> tuple[Message, bool] | None:
        def update(conn: sqlite3.Connection) -> tuple[Message, bool] | None:
            row = conn.execute(
                "SELECT body FROM messages WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, message_id),
            ).fetchone()
            if row is None:
                return None
            message = msgspec.json.decode(row[0], type=Message)
            if user_id in message.read_by:
                return message, False
            message = msgspec.structs.replace(message, read_by=(*message.read_by, user_id))
            conn.execute(
                "UPDATE messages SET body = ? WHERE conversation_id = ? AND message_id = ?",
                (msgspec.json.encode(message), conversation_id, message_id),
            )
            if event is not None:
                append_event(conn, event_done(event, message))
            return message, True

        return await self._db.write(update)

    # --- objects ----------------------------------------------------------------------------------
    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        keys = list(dict.fromkeys(stored_keys))

        def select(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for chunk in chunks(keys):
                sql = f"SELECT stored_key FROM image_refs WHERE stored_key IN ({placeholders(chunk)})"  # noqa: S608
                found.update(row[0] for row in conn.execute(sql, chunk))
            return found

        return await self._db.read(select)
