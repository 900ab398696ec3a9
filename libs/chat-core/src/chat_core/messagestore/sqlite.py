"""SQLite chat store: the embedded default, one WAL database under ``DATA_DIR``.

The queries of every narrow store (conversations, messages, devices, outbox, push receipts) over one
``chat_core.sqlite_engine.SqliteEngine``: each operation is atomic (message + image reference + outbox
entry together or not at all), writes share group commits, reads run on a pool beside the writer.
``synchronous=FULL`` because a 201 promises the message survives a power cut, not only a crash.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import msgspec

from chat_core import sqlite_engine
from chat_core.messagestore import (
    PUSH_RECEIPT_TTL,
    ChatStore,
    Conversation,
    ConversationExists,
    ConversationNotFound,
    Device,
    ImageMetadata,
    LastMessage,
    Message,
    MessageDeleted,
    MessageEdit,
    ObjectAlreadyUsed,
    OutboxEntry,
    Page,
    PushClaim,
    StoredImage,
    TooManyParticipants,
    created_event,
    decode_cursor,
    deleted_event,
    edited,
    event_done,
    finished,
    legacy_outbox_fields,
    page_of,
)
from chat_core.sqlite_engine import SqliteEngine
from chat_core.timestamps import from_micros, micros

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["SqliteChatStore", "create"]

T = TypeVar("T")

_PAGE = 200  # rows per read of the lifecycle jobs' scans
_IN_CHUNK = 500  # bound on "IN (?, ?, ...)" lists (SQLite allows 32766 variables; keep statements small)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    name            TEXT,
    participants    TEXT    NOT NULL,  -- JSON array, in the order members joined
    created_at      INTEGER NOT NULL,  -- microseconds since the epoch, UTC
    updated_at      INTEGER NOT NULL,
    last_message    BLOB,              -- JSON LastMessage
    admins          TEXT,              -- JSON array: members with the admin role
    retention_days  INTEGER,           -- NULL: the deployment's MESSAGE_RETENTION_DAYS
    push_image_previews INTEGER        -- 0: pushes carry no image; NULL or 1: they may
);
-- One row per member: the by-user index behind "my conversations".
CREATE TABLE IF NOT EXISTS participants (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS participants_by_user ON participants (user_id, conversation_id);
CREATE INDEX IF NOT EXISTS conversations_by_update ON conversations (updated_at, conversation_id);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT    NOT NULL,
    message_id      TEXT    NOT NULL,
    timestamp       INTEGER NOT NULL,
    body            BLOB    NOT NULL,  -- JSON Message (the spec's fields)
    sender_id       TEXT,              -- the body's senderId: a user's messages, for erasure
    PRIMARY KEY (conversation_id, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (conversation_id, timestamp, message_id);
-- The stored key is the primary key: one object backs at most one message.
CREATE TABLE IF NOT EXISTS image_refs (
    stored_key      TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    message_id      TEXT NOT NULL
) WITHOUT ROWID;
-- The event outbox (chat_core.messagestore.OutboxEntry). Data dirs from before it call event_id message_id
-- (all their entries were message.created, keyed by the message): _on_open renames the column.
CREATE TABLE IF NOT EXISTS outbox (
    event_id     TEXT    PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    body         BLOB    NOT NULL,  -- JSON OutboxEntry
    leased_until INTEGER            -- a relay's claim ends (microseconds); NULL: nobody holds it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    token      TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    platform   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    provider   TEXT                -- fcm | apns; NULL: fcm (registered before providers existed)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_by_user ON devices (user_id);
CREATE TABLE IF NOT EXISTS push_receipts (
    notification_id TEXT    NOT NULL,
    device_token    TEXT    NOT NULL,
    claimed_at      INTEGER NOT NULL,
    leased_until    INTEGER,           -- a claim's lease ends (microseconds); NULL: pushed (done)
    PRIMARY KEY (notification_id, device_token)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_receipts_by_age ON push_receipts (claimed_at);
"""


def _on_open(conn: sqlite3.Connection) -> None:
    # Data dirs made before roles existed: add the column (NULL: the creator is the admin).
    columns = {row[1] for row in conn.execute("PRAGMA table_info(conversations)")}
    if "admins" not in columns:
        conn.execute("ALTER TABLE conversations ADD COLUMN admins TEXT")
    if "push_image_previews" not in columns:
        conn.execute("ALTER TABLE conversations ADD COLUMN push_image_previews INTEGER")
    # Data dirs made before devices said which push service their token is for (NULL: FCM).
    if "provider" not in {row[1] for row in conn.execute("PRAGMA table_info(devices)")}:
        conn.execute("ALTER TABLE devices ADD COLUMN provider TEXT")
    if "retention_days" not in columns:
        conn.execute("ALTER TABLE conversations ADD COLUMN retention_days INTEGER")
    # Data dirs made before erasure: the sender as a column of its own, filled from the bodies.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "sender_id" not in columns:
        conn.execute("ALTER TABLE messages ADD COLUMN sender_id TEXT")
        conn.execute("UPDATE messages SET sender_id = json_extract(CAST(body AS TEXT), '$.senderId')")
    conn.execute("CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender_id, timestamp)")
    # Data dirs made before push claims had leases: add the column (NULL: done, as those claims were).
    columns = {row[1] for row in conn.execute("PRAGMA table_info(push_receipts)")}
    if "leased_until" not in columns:
        conn.execute("ALTER TABLE push_receipts ADD COLUMN leased_until INTEGER")
    columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    if "message_id" in columns:
        conn.execute("ALTER TABLE outbox RENAME COLUMN message_id TO event_id")
    if "leased_until" not in columns:
        conn.execute("ALTER TABLE outbox ADD COLUMN leased_until INTEGER")
    conn.execute("CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (created_at, event_id)")
    _expire_receipts(conn)


def _append_event(conn: sqlite3.Connection, event: OutboxEntry) -> None:
    """The one way an entry enters the outbox: inside the transaction of the change it announces."""
    conn.execute(
        "INSERT INTO outbox (event_id, created_at, body) VALUES (?, ?, ?)",
        (event.event_id, micros(event.created_at), msgspec.json.encode(event)),
    )


def _outbox_entry(row: sqlite3.Row) -> OutboxEntry:
    fields = legacy_outbox_fields(msgspec.json.decode(row["body"]), row["event_id"])
    return msgspec.convert(fields, OutboxEntry)


def _expire_receipts(conn: sqlite3.Connection) -> None:
    # Receipts only guard against redelivery, which stops once the queue's retention is over.
    cutoff = micros(dt.datetime.now(dt.UTC) - PUSH_RECEIPT_TTL)
    conn.execute("DELETE FROM push_receipts WHERE claimed_at < ?", (cutoff,))


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


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


def _placeholders(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


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


class SqliteChatStore(ChatStore):
    name = "sqlite"
    readiness_name = "sqlite"
    outage_code = "store_unavailable"
    outage_errors = sqlite_engine.OUTAGE_ERRORS

    def __init__(self, path: Path | str, *, readers: int = 4) -> None:
        self._db = SqliteEngine(
            path, schema=_SCHEMA, readers=readers, on_open=_on_open, label="SQLite message store"
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

    # --- conversations and membership ------------------------------------------------------------
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
                _append_event(conn, event)

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
                _append_event(conn, msgspec.structs.replace(event, added=tuple(sorted(joined))))
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
                _append_event(conn, event)
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
                    (after, _PAGE),
                ).fetchall()
            )
            for row in rows:
                yield _conversation(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1]["conversation_id"]

    # --- messages ---------------------------------------------------------------------------------
    async def messages_before(self, conversation_id: str, before: dt.datetime) -> AsyncIterator[Message]:
        position = (-1, "")
        cutoff = micros(before)
        while True:
            rows = await self._db.read(
                lambda conn, position=position: conn.execute(
                    "SELECT timestamp, message_id, body FROM messages WHERE conversation_id = ?"
                    " AND timestamp < ? AND (timestamp, message_id) > (?, ?)"
                    " ORDER BY timestamp, message_id LIMIT ?",
                    (conversation_id, cutoff, *position, _PAGE),
                ).fetchall()
            )
            for row in rows:
                yield msgspec.json.decode(row["body"], type=Message)
            if len(rows) < _PAGE:
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
                    (user_id, *position, _PAGE),
                ).fetchall()
            )
            for row in rows:
                yield row["conversation_id"], msgspec.json.decode(row["body"], type=Message)
            if len(rows) < _PAGE:
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
            _append_event(conn, entry)
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
            _append_event(
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
                _append_event(conn, event_done(event, changed))
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
                    _append_event(conn, event_done(event, updated))
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
                _append_event(conn, event_done(event, message))
            return message, True

        return await self._db.write(update)

    # --- objects ----------------------------------------------------------------------------------
    async def referenced_objects(self, stored_keys: Sequence[str]) -> set[str]:
        keys = list(dict.fromkeys(stored_keys))

        def select(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for chunk in _chunks(keys):
                sql = f"SELECT stored_key FROM image_refs WHERE stored_key IN ({_placeholders(chunk)})"  # noqa: S608
                found.update(row[0] for row in conn.execute(sql, chunk))
            return found

        return await self._db.read(select)

    # --- devices ----------------------------------------------------------------------------------
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
            for chunk in _chunks(users):
                sql = (
                    "SELECT token, user_id, platform, updated_at, provider FROM devices"  # noqa: S608
                    f" WHERE user_id IN ({_placeholders(chunk)}) ORDER BY user_id, token"
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

    # --- outbox -----------------------------------------------------------------------------------
    async def pending_outbox(self, *, older_than: float, limit: int) -> list[OutboxEntry]:
        cutoff = micros(dt.datetime.now(dt.UTC)) - int(older_than * 1_000_000)

        def select(conn: sqlite3.Connection) -> list[OutboxEntry]:
            rows = conn.execute(
                "SELECT event_id, body FROM outbox WHERE created_at < ?"
                " ORDER BY created_at, event_id LIMIT ?",
                (cutoff, limit),
            )
            return [_outbox_entry(row) for row in rows]

        return await self._db.read(select)

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        now = micros(dt.datetime.now(dt.UTC))
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
            for chunk in _chunks(ids):
                conn.execute(
                    f"UPDATE outbox SET leased_until = NULL WHERE event_id IN ({_placeholders(chunk)})",  # noqa: S608
                    chunk,
                )

        if ids:
            await self._db.write(release)

    async def delete_outbox(self, event_ids: Collection[str]) -> None:
        ids = list(dict.fromkeys(event_ids))

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(ids):
                conn.execute(f"DELETE FROM outbox WHERE event_id IN ({_placeholders(chunk)})", chunk)  # noqa: S608

        if ids:
            await self._db.write(delete)

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        def select(conn: sqlite3.Connection) -> tuple[int, dt.datetime | None]:
            count, oldest = conn.execute("SELECT count(*), min(created_at) FROM outbox").fetchone()
            return int(count), None if oldest is None else from_micros(oldest)

        return await self._db.read(select)

    # --- push receipts ----------------------------------------------------------------------------
    async def claim_push(self, notification_id: str, device_token: str, *, lease: dt.timedelta) -> PushClaim:
        now = time.time_ns() // 1_000
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
                (notification_id, device_token, time.time_ns() // 1_000),
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


def create(backends: Backends) -> SqliteChatStore:
    return SqliteChatStore(Path(backends.settings.service.data_dir) / "messages.sqlite3")
