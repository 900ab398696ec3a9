"""One poll loop for every queue worker: free slots -> one receive -> a task per job -> drain at shutdown.

The notification consumer and the media processor differ only in what they do with a job; how jobs are
taken, bounded and drained is this one class:

* at most ``concurrency`` jobs in work at once: the poller waits for a free slot, then asks the queue for
  as many jobs as there are free slots (up to ``MAX_RECEIVE_BATCH``, SQS's maximum per receive);
* a failed receive (the queue unreachable) is retried after a jittered, doubling pause (at most 10 s);
* the queue's depth (main and dead-letter) is exported to a gauge every ``DEPTH_INTERVAL_SECONDS``;
* shutdown: no new receive starts; the receive in flight returns what it has (the SQLite queue's wait
  ends at once; an SQS long poll is awaited, at most ``wait_seconds``, because a cancelled one can still
  take a message and hide it for a visibility timeout), and what it brings is handled with the rest.
  Jobs in work get ``drain_seconds`` to finish; the rest are cancelled and come back after their
  visibility timeout (each worker's own idempotence makes the second attempt safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic

import structlog
from prometheus_client import Gauge

from chat_core.jobqueue import J, JobQueue, Received

__all__ = ["DEPTH_INTERVAL_SECONDS", "MAX_RECEIVE_BATCH", "RECEIVE_GRACE_SECONDS", "JobRunner"]

MAX_RECEIVE_BATCH = 10
DEPTH_INTERVAL_SECONDS = 15.0
RECEIVE_GRACE_SECONDS = 2.0  # beyond wait_seconds, for the receive's round trip
_POLL_ERROR_MAX_BACKOFF = 10.0
_log = structlog.get_logger("jobqueue")


class JobRunner(Generic[J]):
    """Feeds ``handle`` with jobs from ``queue`` while ``running()`` is entered."""

    def __init__(
        self,
        name: str,
        queue: JobQueue[J],
        handle: Callable[[Received[J]], Awaitable[None]],
        *,
        concurrency: int,
        wait_seconds: float,
        drain_seconds: float,
        depth_gauge: Gauge,
    ) -> None:
        self.name = name
        self._queue = queue
        self._handle = handle
        self._wait_seconds = wait_seconds
        self._drain_seconds = drain_seconds
        self._depth_main = depth_gauge.labels("main")
        self._depth_dead = depth_gauge.labels("dlq")
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._stop = asyncio.Event()
        poller = asyncio.create_task(self._poll(), name=f"{self.name}-poller")
        depth = asyncio.create_task(self._export_depth(), name=f"{self.name}-queue-depth")
        try:
            yield
        finally:
            # Stop taking work, but let the receive in flight return: what it took is handled with the
            # rest instead of sitting hidden for a visibility timeout. The SQLite queue's wait ends now;
            # an SQS long poll returns within wait_seconds (cancelling it could hide a message).
            self._stop.set()
            depth.cancel()
            self._queue.end_receives()
            await asyncio.wait({poller}, timeout=self._wait_seconds + RECEIVE_GRACE_SECONDS)
            poller.cancel()
            await asyncio.gather(poller, depth, return_exceptions=True)
            await self.drain()

    async def drain(self) -> None:
        """Let the jobs in work finish within ``drain_seconds``; cancel what is left."""
        if not self._in_flight:
            return
        _done, pending = await asyncio.wait(set(self._in_flight), timeout=self._drain_seconds)
        for task in pending:
            task.cancel()
        if pending:
            _log.warning("jobs_cancelled_at_shutdown", queue=self.name, count=len(pending))
            await asyncio.wait(pending)

    async def _take_slots(self) -> int:
        """Wait for one free slot, then take every other free one (up to one receive's worth)."""
        await self._slots.acquire()
        taken = 1
        while taken < MAX_RECEIVE_BATCH and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            taken += 1
        return taken

    def _give_back(self, count: int) -> None:
        for _ in range(count):
            self._slots.release()

    async def _poll(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            taken = await self._take_slots()
            if self._stop.is_set():
                self._give_back(taken)
                return
            try:
                batch = await self._queue.receive(max_messages=taken, wait_seconds=self._wait_seconds)
            except Exception as exc:
                self._give_back(taken)
                _log.warning("receive_failed", queue=self.name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                backoff = min(backoff * 2, _POLL_ERROR_MAX_BACKOFF)
                continue
            except BaseException:
                self._give_back(taken)
                raise
            backoff = 0.5
            self._give_back(taken - len(batch))
            for received in batch:
                task = asyncio.create_task(self._run_one(received), name=f"{self.name}-job")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _run_one(self, received: Received[J]) -> None:
        try:
            await self._handle(received)
        finally:
            self._slots.release()

    async def _export_depth(self) -> None:
        while True:
            try:
                main, dead = await self._queue.depth()
                self._depth_main.set(main)
                self._depth_dead.set(dead)
            except Exception as exc:
                _log.debug("queue_depth_unavailable", queue=self.name, error=repr(exc))
            await asyncio.sleep(DEPTH_INTERVAL_SECONDS)
