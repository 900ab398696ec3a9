"""Conversations and their membership in SQLite (``conversations``, one ``participants`` row per member)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Collection

import msgspec

from chat_core.chatstore import (
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationStore,
    LastMessage,
    OutboxEntry,
    Page,
    TooManyParticipants,
)
from chat_core.chatstore.sqlite.base import PAGE, SqliteBase, append_event
from chat_core.timestamps import from_micros, micros


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(
        conversation_id=row["conversation_id"],
        participants=tuple(msgspec.json.decode(row["participants"], type=list[str])),
        name=row["name"],
        created_at=from_micros(row["created_at"]),
        updated_at=from_micros(row["updated_at"]),
        last_message=msgspec.json.decode(row["last_message"], type=LastMessage)
        if row["last_message"] is not None
        else None,
        admins=tuple(msgspec.json.decode(row["admins"], type=list[str])) if row["admins"] else (),
        retention_days=row["retention_days"],
        push_image_previews=row["push_image_previews"] != 0,
    )


_CONVERSATION_COLUMNS = (
    "c.conversation_id, c.name, c.participants, c.created_at, c.updated_at, c.last_message, c.admins,"
    " c.retention_days, c.push_image_previews"
)


def _select_conversation(conn: sqlite3.Connection, conversation_id: str) -> Conversation | None:
    row = conn.execute(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c WHERE c.conversation_id = ?",  # noqa: S608
        (conversation_id,),
    ).fetchone()
    return None if row is None else _conversation(row)


def _set_last_message(
    conn: sqlite3.Connection,
    conversation_id: str,
    last_message: LastMessage,
    replaces: Callable[[LastMessage | None], bool],
) -> None:
    row = conn.execute(
        "SELECT updated_at, last_message FROM conversations WHERE conversation_id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        return
    current = None if row[1] is None else msgspec.json.decode(row[1], type=LastMessage)
    if not replaces(current):
        return
    conn.execute(
        "UPDATE conversations SET last_message = ?, updated_at = ? WHERE conversation_id = ?",
        (msgspec.json.encode(last_message), max(row[0], micros(last_message.timestamp)), conversation_id),
    )


class SqliteConversations(SqliteBase, ConversationStore):
    async def create_conversation(
        self, conversation: Conversation, *, event: OutboxEntry | None = None
    ) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "SELECT 1 FROM conversations WHERE conversation_id = ?", (conversation.conversation_id,)
            ).fetchone()
            if taken is not None:
                raise ConversationExists(conversation.conversation_id)
            conn.execute(
                "INSERT INTO conversations"
                " (conversation_id, name, participants, created_at, updated_at, last_message, admins,"
                " retention_days, push_image_previews) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation.conversation_id,
                    conversation.name,
                    msgspec.json.encode(list(conversation.participants)).decode(),
                    micros(conversation.created_at),
                    micros(conversation.updated_at),
                    None
                    if conversation.last_message is None
                    else msgspec.json.encode(conversation.last_message),
                    msgspec.json.encode(list(conversation.admins)).decode(),
                    conversation.retention_days,
                    int(conversation.push_image_previews),
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO participants (conversation_id, user_id) VALUES (?, ?)",
                [(conversation.conversation_id, user) for user in conversation.participants],
            )
            if event is not None:
                append_event(conn, event)

        await self._db.write(insert)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        return await self._db.read(_select_conversation, conversation_id)

    async def get_participants(self, conversation_id: str) -> frozenset[str] | None:
        def select(conn: sqlite3.Connection) -> frozenset[str] | None:
            row = conn.execute(
                "SELECT participants FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
            return None if row is None else frozenset(msgspec.json.decode(row[0], type=list[str]))

        return await self._db.read(select)

    async def list_conversations(
        self, user_id: str, *, limit: int, cursor: str | None = None
    ) -> Page[Conversation]:
        # Keyset pagination on (updated_at, id). A conversation that gets a new message while someone
        # pages moves to the front: it is on a page already seen, so it is not repeated further down.
        return await self._newest_first(
            f"SELECT {_CONVERSATION_COLUMNS} FROM participants p"  # noqa: S608
            " JOIN conversations c ON c.conversation_id = p.conversation_id WHERE p.user_id = ?",
            (user_id,),
            order=("c.updated_at", "c.conversation_id"),
            cursor=cursor,
            limit=limit,
            decode=_conversation,
            position=lambda c: (c.updated_at, c.conversation_id),
        )

    async def add_participants(
        self,
        conversation_id: str,
        user_ids: Collection[str],
        *,
        admins: Collection[str] = (),
        event: OutboxEntry | None = None,
        max_participants: int | None = None,
    ) -> Conversation:
        def add(conn: sqlite3.Connection) -> Conversation:
            # Read, check and write in one write transaction: concurrent additions queue on it.
            current = _select_conversation(conn, conversation_id)
            if current is None:
                raise ConversationNotFound(conversation_id)
            joined = [user for user in dict.fromkeys(user_ids) if user not in current.participants]
            if max_participants is not None and len(current.participants) + len(joined) > max_participants:
                raise TooManyParticipants(max_participants)
            participants = (*current.participants, *joined)
            promoted = tuple(
                dict.fromkeys([*current.admins, *(user for user in admins if user in participants)])
            )
            if not joined and promoted == current.admins:
                return current
            conn.execute(
                "UPDATE conversations SET participants = ?, admins = ? WHERE conversation_id = ?",
                (
                    msgspec.json.encode(list(participants)).decode(),
                    msgspec.json.encode(list(promoted)).decode(),
                    conversation_id,
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO participants (conversation_id, user_id) VALUES (?, ?)",
                [(conversation_id, user) for user in joined],
            )
            if event is not None and joined:
                # Who really joined (the caller's list was read before this transaction).
                append_event(conn, msgspec.structs.replace(event, added=tuple(sorted(joined))))
            return msgspec.structs.replace(current, participants=participants, admins=promoted)

        return await self._db.write(add)

    async def set_push_image_previews(self, conversation_id: str, enabled: bool) -> Conversation:
        def update(conn: sqlite3.Connection) -> Conversation:
            current = _select_conversation(conn, conversation_id)
            if current is None:
                raise ConversationNotFound(conversation_id)
            conn.execute(
                "UPDATE conversations SET push_image_previews = ? WHERE conversation_id = ?",
                (int(enabled), conversation_id),
            )
            return msgspec.structs.replace(current, push_image_previews=enabled)

        return await self._db.write(update)

    async def remove_participant(
        self, conversation_id: str, user_id: str, *, event: OutboxEntry | None = None
    ) -> Conversation:
        def remove(conn: sqlite3.Connection) -> Conversation:
            current = _select_conversation(conn, conversation_id)
            if current is None:
                raise ConversationNotFound(conversation_id)
            if user_id not in current.participants:
                return current
            participants = tuple(user for user in current.participants if user != user_id)
            admins = tuple(user for user in current.admins if user != user_id)
            conn.execute(
                "UPDATE conversations SET participants = ?, admins = ? WHERE conversation_id = ?",
                (
                    msgspec.json.encode(list(participants)).decode(),
                    msgspec.json.encode(list(admins)).decode(),
                    conversation_id,
                ),
            )
            conn.execute(
                "DELETE FROM participants WHERE conversation_id = ? AND user_id = ?",
                (conversation_id, user_id),
            )
            if event is not None:
                append_event(conn, event)
            return msgspec.structs.replace(current, participants=participants, admins=admins)

        return await self._db.write(remove)

    async def touch_conversation(self, conversation_id: str, last_message: LastMessage) -> None:
        await self._db.write(_set_last_message, conversation_id, last_message, last_message.is_newer_than)

    async def revise_last_message(self, conversation_id: str, last_message: LastMessage) -> None:
        await self._db.write(_set_last_message, conversation_id, last_message, last_message.revises)

    async def set_retention(self, conversation_id: str, days: int | None) -> Conversation:
        def update(conn: sqlite3.Connection) -> Conversation:
            conn.execute(
                "UPDATE conversations SET retention_days = ? WHERE conversation_id = ?",
                (days, conversation_id),
            )
            current = _select_conversation(conn, conversation_id)
            if current is None:
                raise ConversationNotFound(conversation_id)
            return current

        return await self._db.write(update)

    async def every_conversation(self) -> AsyncIterator[Conversation]:
        after = ""
        while True:
            rows = await self._db.read(
                lambda conn, after=after: conn.execute(
                    f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c"  # noqa: S608
                    " WHERE c.conversation_id > ? ORDER BY c.conversation_id LIMIT ?",
                    (after, PAGE),
                ).fetchall()
            )
            for row in rows:
                yield _conversation(row)
            if len(rows) < PAGE:
                return
            after = rows[-1]["conversation_id"]
