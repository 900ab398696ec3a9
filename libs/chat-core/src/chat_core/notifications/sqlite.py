"""SQLite NotificationQueue: the embedded default, a durable single-node queue with SQS's semantics.

A received message stays in its row, hidden until ``visible_at`` (the visibility timeout); ``ack`` deletes
it, ``retry_later`` moves ``visible_at``. Every receive bumps ``receive_count`` and hands out a fresh
receipt, so a consumer holding a stale receipt (its message was redelivered to someone else) cannot ack
or delay it. A message that becomes visible again after ``NOTIFICATION_MAX_RECEIVES`` receives is moved to
the dead-letter table instead of being delivered, as SQS's redrive policy does.

sqlite3 runs in worker threads (never on the event loop); writes are single ``BEGIN IMMEDIATE``
transactions on one connection. A receive that finds nothing waits for a local send (an in-process
wake-up) or polls briefly, so another process sharing the file (separate services on one laptop) is
seen too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import msgspec
import structlog

from chat_core.notifications import Notification, ReceivedNotification
from chat_core.notifications.batching import Coalescer

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["SqliteNotificationQueue", "create"]

R = TypeVar("R")
_log = structlog.get_logger("chat_core.notifications.sqlite")

_BUSY_TIMEOUT_MS = 10_000
_POLL_SECONDS = 0.25  # how soon a message sent by another process sharing the file is noticed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    body          BLOB    NOT NULL,  -- JSON Notification (its trace lives in `trace`)
    trace         BLOB    NOT NULL,  -- JSON W3C trace context: the message attributes
    enqueued_at   INTEGER NOT NULL,  -- microseconds since the epoch
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS queue_by_visibility ON queue (visible_at, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY,
    body          BLOB    NOT NULL,
    trace         BLOB    NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at       INTEGER NOT NULL
);
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TRACE = msgspec.json.Decoder(dict[str, str])
_BODY = msgspec.json.Decoder(Notification)


def _now_us() -> int:
    return time.time_ns() // 1000


class _Row(msgspec.Struct, frozen=True):
    seq: int
    body: bytes
    trace: bytes
    enqueued_at: int
    receive_count: int
    receipt: str


class SqliteNotificationQueue:
    name = "sqlite"
    readiness_name = "notification_queue"

    def __init__(self, path: Path | str, *, max_receives: int, visibility_timeout: float) -> None:
        self._path = Path(path)
        self._max_receives = max_receives
        self._visibility_us = int(visibility_timeout * 1_000_000)
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._sent = asyncio.Event()
        # Acks close together share one transaction (one fsync) instead of one each.
        self._acks: Coalescer[str] = Coalescer(self._delete_acked, max_batch=200, linger=0.005)

    # --- plumbing -----------------------------------------------------------------------------------
    async def _write(self, fn: Callable[..., R], *args: Any) -> R:
        def run() -> R:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the SQLite notification queue is not started")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await anyio.to_thread.run_sync(run, limiter=self._limiter)

    def _wake_receivers(self) -> None:
        self._sent.set()
        self._sent = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._conn is not None:
            return

        def open_db() -> sqlite3.Connection:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an enqueued notification survives a power cut
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.executescript(_SCHEMA)
            return conn

        self._conn = await anyio.to_thread.run_sync(open_db)

    async def close(self) -> None:
        await self._acks.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def ping(self) -> None:
        await self._write(lambda conn: conn.execute("SELECT 1").fetchone())

    # --- the port -----------------------------------------------------------------------------------
    async def send(self, notifications: Sequence[Notification]) -> None:
        if not notifications:
            return
        now = _now_us()
        rows = [
            (
                msgspec.json.encode(msgspec.structs.replace(n, trace={})),
                msgspec.json.encode(n.trace),
                now,
                now,
            )
            for n in notifications
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO queue (body, trace, enqueued_at, visible_at) VALUES (?, ?, ?, ?)", rows
            )

        await self._write(insert)
        self._wake_receivers()

    async def receive(self, *, max_messages: int, wait_seconds: float) -> list[ReceivedNotification]:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            sent = self._sent  # taken before looking, so a send in between still wakes us
            rows, next_visible_us = await self._write(self._claim, max_messages)
            received = [r for r in (self._decode(row) for row in rows) if r is not None]
            if received:
                return received
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = min(remaining, _POLL_SECONDS)
            if next_visible_us is not None:
                pause = min(pause, max(0.0, (next_visible_us - _now_us()) / 1_000_000))
            try:
                async with asyncio.timeout(pause):
                    await sent.wait()
            except TimeoutError:
                pass

    def _claim(self, conn: sqlite3.Connection, limit: int) -> tuple[list[_Row], int | None]:
        now = _now_us()
        # Out of attempts: redrive to the dead-letter table rather than deliver again.
        conn.execute(
            "INSERT INTO dead_letters (seq, body, trace, enqueued_at, receive_count, dead_at)"
            " SELECT seq, body, trace, enqueued_at, receive_count, ? FROM queue"
            " WHERE visible_at <= ? AND receive_count >= ?",
            (now, now, self._max_receives),
        )
        conn.execute(
            "DELETE FROM queue WHERE visible_at <= ? AND receive_count >= ?", (now, self._max_receives)
        )
        picked = conn.execute(
            "SELECT seq, body, trace, enqueued_at, receive_count FROM queue"
            " WHERE visible_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        ).fetchall()
        rows: list[_Row] = []
        for seq, body, trace, enqueued_at, receive_count in picked:
            receipt = f"{seq}:{uuid.uuid4().hex}"
            conn.execute(
                "UPDATE queue SET receive_count = receive_count + 1, visible_at = ?, receipt = ?"
                " WHERE seq = ?",
                (now + self._visibility_us, receipt, seq),
            )
            rows.append(_Row(seq, body, trace, enqueued_at, receive_count + 1, receipt))
        next_visible = None
        if not rows:
            (next_visible,) = conn.execute("SELECT min(visible_at) FROM queue").fetchone()
        return rows, next_visible

    def _decode(self, row: _Row) -> ReceivedNotification | None:
        try:
            notification = _BODY.decode(row.body)
            trace = _TRACE.decode(row.trace)
        except msgspec.DecodeError:
            # Never delivered; it reaches the dead-letter table once its attempts are used up.
            _log.error("undecodable_notification", seq=row.seq)
            return None
        return ReceivedNotification(
            notification=msgspec.structs.replace(notification, trace=trace),
            receipt=row.receipt,
            receive_count=row.receive_count,
            enqueued_at=_EPOCH + dt.timedelta(microseconds=row.enqueued_at),
        )

    @staticmethod
    def _parse_receipt(receipt: str) -> tuple[int, str]:
        seq, _, _token = receipt.partition(":")
        try:
            return int(seq), receipt
        except ValueError:
            raise ValueError(f"not a receipt of this queue: {receipt!r}") from None

    async def ack(self, receipt: str) -> None:
        self._parse_receipt(receipt)
        await self._acks.submit(receipt)

    async def _delete_acked(self, receipts: list[str]) -> list[None]:
        rows = [self._parse_receipt(receipt) for receipt in receipts]
        await self._write(
            lambda conn: conn.executemany("DELETE FROM queue WHERE seq = ? AND receipt = ?", rows)
        )
        return [None] * len(receipts)

    async def retry_later(self, receipt: str, delay_seconds: float) -> None:
        seq, receipt = self._parse_receipt(receipt)
        visible_at = _now_us() + int(max(0.0, delay_seconds) * 1_000_000)
        await self._write(
            lambda conn: conn.execute(
                "UPDATE queue SET visible_at = ? WHERE seq = ? AND receipt = ?", (visible_at, seq, receipt)
            )
        )
        if delay_seconds <= 0:
            self._wake_receivers()

    async def depth(self) -> tuple[int, int]:
        def count(conn: sqlite3.Connection) -> tuple[int, int]:
            (main,) = conn.execute("SELECT count(*) FROM queue").fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
            return int(main), int(dead)

        return await self._write(count)


def create(backends: Backends) -> SqliteNotificationQueue:
    settings = backends.settings
    return SqliteNotificationQueue(
        Path(settings.service.data_dir) / "notifications.sqlite3",
        max_receives=settings.sqs.max_receives,
        visibility_timeout=settings.sqs.visibility_timeout_seconds,
    )
