"""Coalesce single calls made close together into one batch call: the one micro-batching helper.

Used for queue acks (one DeleteMessageBatch, one commit), the outbox deletes of the message service and the
SQLite engine's group commit. ``Coalescer.submit`` returns once the batch holding its item was flushed,
raising that item's error; one ``flush`` call settles the whole batch, each caller getting its own result.
Two ways to gather a batch:

* ``linger=<seconds>``: wait at most that long for company (or until ``max_batch`` items), then flush;
  batches may overlap. For calls whose batch is a network request (acks, deletes).
* ``linger=None`` (group commit): one batch at a time; whatever arrives while one is being flushed forms
  the next. For a single writer such as SQLite, where every flush costs one fsync whatever its size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")
Flush = Callable[[list[T]], Awaitable[Sequence[BaseException | None]]]


class Coalescer(Generic[T]):
    def __init__(self, flush: Flush[T], *, max_batch: int, linger: float | None) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._linger = linger
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._draining: asyncio.Task[None] | None = None  # group commit: the one batch loop

    async def submit(self, item: T) -> None:
        """Returns once the batch holding ``item`` was flushed; raises that item's error."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, done))
        if self._linger is None:
            if self._draining is None or self._draining.done():
                self._draining = loop.create_task(self._drain(), name="group-commit")
        elif len(self._pending) >= self._max_batch:
            self._flush_now()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger, self._flush_now)
        # Shielded: a caller that gives up does not cancel the batch the others wait on.
        await asyncio.shield(done)

    def _take(self) -> list[tuple[T, asyncio.Future[None]]]:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        return batch

    async def _drain(self) -> None:
        while self._pending:
            await self._run(self._take())

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            task = asyncio.get_running_loop().create_task(self._run(self._take()))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        results: Sequence[BaseException | None]
        try:
            results = await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:  # every waiter must learn the outcome
            results = [exc] * len(batch)
        for (_, done), error in zip(batch, results, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    async def close(self) -> None:
        """Flush what is pending and wait for batches in flight."""
        if self._linger is None:
            if self._draining is not None:
                await asyncio.gather(self._draining, return_exceptions=True)
            return
        if self._pending:
            self._flush_now()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
