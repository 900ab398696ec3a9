"""SQLite JobQueue: the embedded default, a durable single-node queue with SQS's semantics.

One file per ``JobKind`` under ``DATA_DIR`` (``notifications.sqlite3`` for the notification queue).

A received message stays in its row, hidden until ``visible_at`` (the visibility timeout); ``ack`` deletes
it, ``retry_later`` moves ``visible_at``. Every receive bumps ``receive_count`` and hands out a fresh
receipt, so a consumer holding a stale receipt (its message was redelivered to someone else) cannot ack
or delay it. A message that becomes visible again after the kind's ``max_receives`` receives is moved to
the dead-letter table instead of being delivered, as SQS's redrive policy does.

sqlite3 runs in worker threads (never on the event loop), on the same group-commit engine as the SQLite
chat store (``chat_core.sqlite_engine``). A receive that finds nothing waits for a local send (an in-process
wake-up) or polls briefly, so another process sharing the file (separate services on one laptop) is
seen too.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import msgspec
import structlog

from chat_core.batching import Coalescer
from chat_core.jobqueue import Job, JobKind, JobQueue, Received
from chat_core.sqlite_engine import SqliteEngine
from chat_core.timestamps import from_micros

__all__ = ["SqliteJobQueue", "create"]

J = TypeVar("J", bound=Job)
_log = structlog.get_logger("chat_core.jobqueue.sqlite")

_POLL_SECONDS = 0.25  # how soon a message sent by another process sharing the file is noticed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    body          BLOB    NOT NULL,  -- JSON job (its trace lives in `trace`)
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

_TRACE = msgspec.json.Decoder(dict[str, str])


def _now_us() -> int:
    return time.time_ns() // 1000


class _Row(msgspec.Struct, frozen=True):
    seq: int
    body: bytes
    trace: bytes
    enqueued_at: int
    receive_count: int
    receipt: str


class SqliteJobQueue(JobQueue[J]):
    name = "sqlite"

    def __init__(self, path: Path | str, kind: JobKind[J]) -> None:
        self._kind = kind
        self._db = SqliteEngine(path, schema=_SCHEMA, label=f"SQLite {kind.name} queue")
        self.readiness_name = kind.readiness_name  # "sqlite" alone would not say which queue is failing
        self._body = msgspec.json.Decoder(kind.job_type)
        self._max_receives = kind.max_receives
        self._visibility_us = int(kind.visibility_timeout_seconds * 1_000_000)
        self._sent = asyncio.Event()
        self._receives_ended = 0  # bumped by end_receives(): the receives waiting then return
        # Acks close together share one transaction (one fsync) instead of one each.
        self._acks: Coalescer[str] = Coalescer(self._delete_acked, max_batch=200, linger=0.005)

    def _wake_receivers(self) -> None:
        self._sent.set()
        self._sent = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._db.start()

    async def close(self) -> None:
        await self._acks.close()
        await self._db.close()

    async def ping(self) -> None:
        await self._db.write(lambda conn: conn.execute("SELECT 1").fetchone())

    # --- the port -----------------------------------------------------------------------------------
    async def send(self, jobs: Sequence[J]) -> None:
        if not jobs:
            return
        now = _now_us()
        rows = [
            (
                msgspec.json.encode(msgspec.structs.replace(job, trace={})),
                msgspec.json.encode(job.trace),
                now,
                now,
            )
            for job in jobs
        ]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO queue (body, trace, enqueued_at, visible_at) VALUES (?, ?, ?, ?)", rows
            )

        await self._db.write(insert)
        self._wake_receivers()

    def end_receives(self) -> None:
        self._receives_ended += 1
        self._wake_receivers()

    async def receive(self, *, max_messages: int, wait_seconds: float) -> list[Received[J]]:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        generation = self._receives_ended
        while True:
            sent = self._sent  # taken before looking, so a send in between still wakes us
            rows, next_visible_us = await self._db.write(self._claim, max_messages)
            received = [r for r in (self._decode(row) for row in rows) if r is not None]
            if received:
                return received
            remaining = deadline - time.monotonic()
            if remaining <= 0 or generation != self._receives_ended:
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

    def _decode(self, row: _Row) -> Received[J] | None:
        try:
            job = self._body.decode(row.body)
            trace = _TRACE.decode(row.trace)
        except msgspec.DecodeError:
            # Never delivered; it reaches the dead-letter table once its attempts are used up.
            _log.error(f"undecodable_{self._kind.name}", seq=row.seq)
            return None
        return Received(
            job=msgspec.structs.replace(job, trace=trace),
            receipt=row.receipt,
            receive_count=row.receive_count,
            enqueued_at=from_micros(row.enqueued_at),
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
        await self._db.write(
            lambda conn: conn.executemany("DELETE FROM queue WHERE seq = ? AND receipt = ?", rows)
        )
        return [None] * len(receipts)

    async def retry_later(self, receipt: str, delay_seconds: float) -> None:
        seq, receipt = self._parse_receipt(receipt)
        visible_at = _now_us() + int(max(0.0, delay_seconds) * 1_000_000)
        await self._db.write(
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

        return await self._db.write(count)


def create(data_dir: str, kind: JobKind[J]) -> SqliteJobQueue[J]:
    """The queue of ``kind`` in its own SQLite file under ``data_dir`` (``notifications.sqlite3``)."""
    return SqliteJobQueue(Path(data_dir) / f"{kind.name}s.sqlite3", kind)
