"""The SQLite chat store's tables, and the migrations of data dirs made before a column existed."""

from __future__ import annotations

import datetime as dt
import sqlite3

from chat_core.chatstore import (
    PUSH_RECEIPT_TTL,
)
from chat_core.timestamps import micros

SCHEMA = """
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
-- The event outbox (chat_core.chatstore.OutboxEntry). Data dirs from before it call event_id message_id
-- (all their entries were message.created, keyed by the message): on_open renames the column.
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


def on_open(conn: sqlite3.Connection, now: dt.datetime) -> None:
    """Bring a data dir made by an older version up to the schema, and drop expired push receipts."""
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
    _expire_receipts(conn, now)


def _expire_receipts(conn: sqlite3.Connection, now: dt.datetime) -> None:
    # Receipts only guard against redelivery, which stops once the queue's retention is over.
    cutoff = micros(now - PUSH_RECEIPT_TTL)
    conn.execute("DELETE FROM push_receipts WHERE claimed_at < ?", (cutoff,))
