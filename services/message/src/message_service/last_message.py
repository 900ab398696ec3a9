"""Coalesced ``lastMessage``/``updatedAt`` updates: at most one conversation write per interval.

Firestore sustains about one write per second per document, and a busy group sends ten messages a
second. The send itself never writes the conversation document (message, image reference and outbox
entry are new documents); this class keeps its summary fresh without contending on it:

* the first touch of a conversation that was not written within ``interval`` is written at once, so a
  quiet conversation's list entry is current when the send returns;
* later touches within the interval only replace the pending newest message (only-if-newer), and the
  worker writes it when the interval is over: one write per conversation per interval, whatever the
  message rate;
* across replicas, a write first takes the conversation's write lease (``chat_core.leases``: a Redis
  ``SET NX PX`` on a key tagged by the conversation): one writer per conversation per interval for the
  whole deployment. A replica that finds the lease taken keeps its pending newest message and tries again
  once the lease has lapsed, so the newest message of any replica is always written in the end;
* the store's ``touch_conversation`` is itself only-if-newer, so writes from several replicas never move
  a conversation back in time. If the lease store cannot answer, the write goes ahead (a write too many
  beats a summary left stale).

A crash loses at most the pending summary of the last interval; the next message repairs it. The
messages themselves are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable

import structlog

from chat_core.chatstore import ConversationStore, LastMessage
from chat_core.leases import WriteLeases, summary_lease

__all__ = ["LastMessageWriter"]

_log = structlog.get_logger("message_service.last_message")
_CONCURRENT_WRITES = 32


class LastMessageWriter:
    def __init__(
        self,
        store: ConversationStore,
        *,
        leases: WriteLeases | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._leases = leases
        self._interval = interval
        self._clock = clock
        self._pending: dict[str, LastMessage] = {}
        self._written_at: dict[str, float] = {}  # when each conversation's last write started
        self._wake = asyncio.Event()

    def _due(self, conversation_id: str, now: float) -> bool:
        return now - self._written_at.get(conversation_id, -math.inf) >= self._interval

    async def touch(self, conversation_id: str, last_message: LastMessage) -> None:
        """Record a new message; writes now only if the conversation was not written within the interval."""
        waiting = self._pending.get(conversation_id)
        if last_message.is_newer_than(waiting):
            self._pending[conversation_id] = last_message
        if self._due(conversation_id, self._clock()):
            await self._write(conversation_id)
        elif waiting is None:
            self._wake.set()  # newly pending: the worker may need to wake earlier than planned

    async def flush_due(self) -> None:
        """Write every pending conversation whose interval is over; forget idle ones."""
        now = self._clock()
        await self._write_all([c for c in self._pending if self._due(c, now)])
        for conversation_id in [
            c for c, at in self._written_at.items() if c not in self._pending and now - at >= self._interval
        ]:
            del self._written_at[conversation_id]

    async def flush_all(self) -> None:
        """Write everything pending (shutdown), leases or not: nobody is left to write it later."""
        await self._write_all(list(self._pending), leased=False)

    def pending(self) -> int:
        return len(self._pending)

    async def _write_all(self, conversation_ids: list[str], *, leased: bool = True) -> None:
        # Many busy conversations: a bounded number of writes in flight, not one after the other.
        for start in range(0, len(conversation_ids), _CONCURRENT_WRITES):
            await asyncio.gather(
                *(self._write(c, leased=leased) for c in conversation_ids[start : start + _CONCURRENT_WRITES])
            )

    async def _write(self, conversation_id: str, *, leased: bool = True) -> None:
        last_message = self._pending.pop(conversation_id, None)
        if last_message is None:
            return
        # Claimed before the await, so concurrent touches of this conversation queue behind this write.
        self._written_at[conversation_id] = self._clock()
        if leased and not await self._leased(conversation_id):
            # Another replica wrote it within the interval: ours waits for the next one (unless newer came).
            if last_message.is_newer_than(self._pending.get(conversation_id)):
                self._pending[conversation_id] = last_message
            return
        try:
            await self._store.touch_conversation(conversation_id, last_message)
        except Exception as exc:
            # The message is stored; only its summary is late. Keep it (unless newer came) and retry.
            if last_message.is_newer_than(self._pending.get(conversation_id)):
                self._pending[conversation_id] = last_message
            _log.warning("conversation_touch_failed", conversation_id=conversation_id, error=repr(exc))

    async def _leased(self, conversation_id: str) -> bool:
        if self._leases is None:
            return True
        try:
            return await self._leases.acquire(summary_lease(conversation_id), self._interval)
        except Exception as exc:
            _log.warning("summary_lease_unavailable", conversation_id=conversation_id, error=repr(exc))
            return True

    def _seconds_to_next_due(self) -> float | None:
        if not self._pending:
            return None
        now = self._clock()
        earliest = min(self._written_at.get(c, -math.inf) for c in self._pending) + self._interval
        return max(0.0, earliest - now)

    @contextlib.asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """Runs during the service's lifespan: writes pending summaries when due, and all at shutdown."""

        async def run() -> None:
            while True:
                delay = self._seconds_to_next_due()
                # Bounded sleep even when idle, so an interval that failed is retried.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval if delay is None else delay)
                self._wake.clear()
                await self.flush_due()

        task = asyncio.create_task(run(), name="conversation-touches")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.flush_all()
