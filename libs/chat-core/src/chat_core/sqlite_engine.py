"""One SQLite database file for an embedded adapter: a writer with group commit, a pool of readers.

sqlite3 calls never run on the event loop: they run in worker threads. All writes go through one
connection behind a limiter of one, each operation atomic in its own savepoint; operations that arrive
while a commit is under way share the next ``BEGIN IMMEDIATE`` transaction and its one fsync (group
commit). Reads use a small pool of connections; WAL lets them run beside the writer, each seeing the last
committed state. ``synchronous=FULL``: what a write returned survives a power cut, not only a crash of the
process.

Several processes may share a file (separate services on one laptop): ``BEGIN IMMEDIATE`` takes SQLite's
write lock and ``busy_timeout`` waits for it. The SQLite chat store and the SQLite job queue both run on
this engine; its group commit is ``chat_core.batching.Coalescer`` without a linger.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import anyio
import anyio.to_thread

from chat_core.batching import Coalescer

__all__ = ["OUTAGE_ERRORS", "SqliteEngine", "is_outage"]

R = TypeVar("R")

BUSY_TIMEOUT_MS = 10_000
OUTAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
# Result codes that mean "cannot answer now", not a bug in a statement: another process held the write
# lock past busy_timeout, the disk failed or filled up, the file went away or became read-only.
_OUTAGE_CODES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
)


def is_outage(exc: Exception) -> bool:
    """Whether ``exc`` is the database being unavailable (a 503 worth a retry) rather than a bug."""
    return isinstance(exc, sqlite3.OperationalError) and str(getattr(exc, "sqlite_errorname", "")).startswith(
        _OUTAGE_CODES
    )


GROUP_MAX = 256  # write jobs sharing one transaction at most


class _Write(Generic[R]):
    """One write: run in the writer thread inside its own savepoint, read back on the event loop."""

    def __init__(self, fn: Callable[..., R], args: tuple[object, ...]) -> None:
        self._fn, self._args = fn, args
        self._result: tuple[R] | None = None  # a tuple: R may itself be None
        self.error: Exception | None = None

    def run(self, conn: sqlite3.Connection) -> None:
        conn.execute("SAVEPOINT job")
        try:
            value = self._fn(conn, *self._args)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self.error = exc
        else:
            conn.execute("RELEASE job")
            self._result = (value,)

    def result(self) -> R:
        if self._result is None:
            raise RuntimeError("the write was not run")
        return self._result[0]


class _Writes(Protocol):
    """A queued write, whatever it returns."""

    error: Exception | None

    def run(self, conn: sqlite3.Connection) -> None: ...


class SqliteEngine:
    def __init__(
        self,
        path: Path | str,
        *,
        schema: str,
        readers: int = 0,
        on_open: Callable[[sqlite3.Connection], None] | None = None,
        label: str = "SQLite database",
    ) -> None:
        self.path = Path(path)
        self._schema = schema
        self._reader_count = readers
        self._on_open = on_open
        self._label = label
        self._writer: sqlite3.Connection | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._write_limiter = anyio.CapacityLimiter(1)
        self._writes: Coalescer[_Writes] = Coalescer(self._commit, max_batch=GROUP_MAX, linger=None)
        # As many threads as connections, so a reader always finds a free connection in the pool.
        self._read_limiter = anyio.CapacityLimiter(max(1, readers))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._writer is not None:
            return

        def open_all() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._connect()
            writer.executescript(self._schema)
            if self._on_open is not None:
                self._on_open(writer)
            for _ in range(self._reader_count):
                self._readers.put(self._connect())
            self._writer = writer

        await anyio.to_thread.run_sync(open_all)

    async def close(self) -> None:
        await self._writes.close()
        writer, self._writer = self._writer, None
        if writer is None:
            return

        def close_all() -> None:
            while not self._readers.empty():
                self._readers.get_nowait().close()
            writer.close()

        await anyio.to_thread.run_sync(close_all, limiter=self._write_limiter)

    # --- writes -------------------------------------------------------------------------------------
    async def write(self, fn: Callable[..., R], *args: object) -> R:
        """Run ``fn(conn, *args)`` as one atomic write in the writer thread; durable when it returns.

        Group commit: writes that arrive while a commit is under way are run together in the next
        transaction, each inside its own savepoint (one failing job rolls back alone), and share one
        COMMIT, so one fsync covers many writes instead of one each.
        """
        write = _Write(fn, args)
        # Not cancellable (the helper shields it): once queued the job runs and commits, never half-done.
        await self._writes.submit(write)
        return write.result()

    async def _commit(self, batch: list[_Writes]) -> list[Exception | None]:
        await anyio.to_thread.run_sync(self._run_group, batch, limiter=self._write_limiter)
        return [write.error for write in batch]

    def _run_group(self, batch: list[_Writes]) -> None:
        conn = self._writer
        if conn is None:
            raise RuntimeError(f"the {self._label} is not started")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                write.run(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- reads --------------------------------------------------------------------------------------
    async def read(self, fn: Callable[..., R], *args: object) -> R:
        """Run ``fn(conn, *args)`` in one read transaction (a consistent snapshot) on a pooled connection."""
        if self._reader_count == 0:
            return await self.write(fn, *args)

        def run() -> R:
            conn = self._readers.get_nowait()
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn, *args)
                finally:
                    conn.execute("COMMIT")
            finally:
                if self._writer is None:  # closed meanwhile: this connection was not in the pool to close
                    conn.close()
                else:
                    self._readers.put(conn)

        if self._writer is None:
            raise RuntimeError(f"the {self._label} is not started")
        return await anyio.to_thread.run_sync(run, limiter=self._read_limiter)
