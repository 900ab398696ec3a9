"""Who may see a conversation, asked of the ConversationStore at most once per conversation every few seconds.

A chat screen loads many images at once, each an authorised request; without a cache each would be one
store read. ``MembershipCache`` keeps each conversation's participants for ``MEMBERSHIP_CACHE_SECONDS``
(bounded staleness) in a bounded LRU, and coalesces concurrent misses for one conversation into one read.

Freshness, in the direction that matters for safety:

* A removed member loses access as soon as the message service publishes ``{"conversationId": ...}`` on
  ``chat_core.realtime.MEMBERSHIP_CHANNEL``: every process's worker drops that entry. Should the bus lose the
  event, the entry still expires after the TTL.
* A new member never waits for the TTL: a cached answer is only trusted when it says "member"; "not a
  member" and "no such conversation" are always read again (and never cached).

One cache per process (the composition root builds it, ``chat_core.composition``), so the upload service
and the image proxy share it and its bus subscription in the all-in-one process.

The access decision is made here, once, for every entry point (upload, proxy, messages, and the socket,
which only ever subscribes to the caller's own conversations): a malformed id, a conversation that does
not exist and one the caller is not in are the same answer, 404 ``conversation_not_found``, reached by the
same path (one membership read; a malformed id reads nothing and exists nowhere), so a stranger cannot tell
"not yours" from "does not exist".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import msgspec
import structlog

from chat_core import keys, metrics
from chat_core.errors import ProblemError
from chat_core.realtime import MEMBERSHIP_CHANNEL, EventBus, Subscription
from chat_core.realtime.events import decode_membership_changed

if TYPE_CHECKING:
    from chat_core.chatstore import ConversationStore

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "Membership",
    "MembershipCache",
    "conversation_not_found",
    "require_member",
]

DEFAULT_MAX_ENTRIES = 10_000
RESUBSCRIBE_SECONDS = 5.0
STARTUP_WAIT_SECONDS = 1.0  # a healthy bus confirms in milliseconds; a dead one must not hold up start-up
_log = structlog.get_logger("chat_core.membership")
_HIT = metrics.MEMBERSHIP_CACHE.labels("hit")
_MISS = metrics.MEMBERSHIP_CACHE.labels("miss")


class Membership(msgspec.Struct, frozen=True):
    """The answer for one user: does the conversation exist, and are they in it."""

    exists: bool
    member: bool


def conversation_not_found() -> ProblemError:
    """The one answer to "not yours", "does not exist" and "not an id at all"."""
    return ProblemError(404, "conversation_not_found", "no such conversation")


async def require_member(store: ConversationStore, conversation_id: str, user_id: str) -> frozenset[str]:
    """The members of ``conversation_id`` read fresh from the store, when ``user_id`` is one; otherwise
    ``conversation_not_found``. For changes that must see the latest membership (sending, listing)."""
    if not keys.CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
        raise conversation_not_found()
    participants = await store.get_participants(conversation_id)
    if participants is None or user_id not in participants:
        raise conversation_not_found()
    return participants


class MembershipCache:
    def __init__(
        self,
        store: ConversationStore,
        *,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        resubscribe_seconds: float = RESUBSCRIBE_SECONDS,
        startup_wait_seconds: float = STARTUP_WAIT_SECONDS,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._resubscribe_seconds = resubscribe_seconds
        self._startup_wait_seconds = startup_wait_seconds
        self._entries: OrderedDict[str, tuple[frozenset[str], float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[frozenset[str] | None]] = {}
        self._workers = 0
        self._subscription: Subscription | None = None
        self._subscriber: asyncio.Task[None] | None = None

    def workers(self, bus: EventBus) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
        """The service workers that keep this cache honest: the invalidation subscription over ``bus``,
        when caching."""
        if not self.enabled:
            return []
        return [lambda: self.invalidation_worker(bus)]

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    @property
    def subscribed(self) -> bool:
        """Whether invalidations from the bus are being received (the worker's subscription is open)."""
        return self._subscription is not None

    def __len__(self) -> int:
        return len(self._entries)

    # --- lookups ----------------------------------------------------------------------------------
    async def require(self, conversation_id: str, user_id: str) -> None:
        """Return when ``user_id`` is a member (cached); otherwise ``conversation_not_found``."""
        if not keys.CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
            raise conversation_not_found()
        if not (await self.check(conversation_id, user_id)).member:
            raise conversation_not_found()

    async def check(self, conversation_id: str, user_id: str) -> Membership:
        participants = self._cached(conversation_id)
        if participants is not None and user_id in participants:
            _HIT.inc()
            return Membership(exists=True, member=True)
        _MISS.inc()
        if self.enabled:
            participants = await self._read(conversation_id)
        else:  # off means off: every lookup is its own fresh read, not even shared with a concurrent one
            participants = await self._store.get_participants(conversation_id)
        if participants is None:
            return Membership(exists=False, member=False)
        return Membership(exists=True, member=user_id in participants)

    def _cached(self, conversation_id: str) -> frozenset[str] | None:
        entry = self._entries.get(conversation_id)
        if entry is None:
            return None
        participants, expires_at = entry
        if self._clock() >= expires_at:
            del self._entries[conversation_id]
            return None
        self._entries.move_to_end(conversation_id)
        return participants

    async def _read(self, conversation_id: str) -> frozenset[str] | None:
        task = self._inflight.get(conversation_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(conversation_id))
            self._inflight[conversation_id] = task
            task.add_done_callback(lambda done: self._forget(conversation_id, done))
        # Shielded: a caller that gives up must not cancel the read the others are waiting on.
        return await asyncio.shield(task)

    def _forget(self, conversation_id: str, task: asyncio.Task[frozenset[str] | None]) -> None:
        if self._inflight.get(conversation_id) is task:
            del self._inflight[conversation_id]
        if not task.cancelled():
            task.exception()  # retrieved, so a read nobody awaited any more is not reported as lost

    async def _fetch(self, conversation_id: str) -> frozenset[str] | None:
        participants = await self._store.get_participants(conversation_id)
        # Kept only while this is still the conversation's registered read: an invalidation that arrived
        # meanwhile unregistered it, and its answer may predate the change (its callers, who asked before
        # the change, still get it).
        current = self._inflight.get(conversation_id) is asyncio.current_task()
        if participants and self.enabled and current:
            self._entries[conversation_id] = (participants, self._clock() + self._ttl)
            self._entries.move_to_end(conversation_id)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return participants

    # --- invalidation -----------------------------------------------------------------------------
    def invalidate(self, conversation_id: str) -> None:
        """Drop what is known about ``conversation_id``; later lookups read the store again."""
        self._entries.pop(conversation_id, None)
        # Later callers must not join a read that started before the change.
        self._inflight.pop(conversation_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def _on_change(self, _channel: str, payload: bytes) -> None:
        changed = decode_membership_changed(payload)
        if changed is None:
            _log.warning("membership_event_malformed", payload=payload[:200].decode(errors="replace"))
            return
        self.invalidate(changed.conversation_id)

    @contextlib.asynccontextmanager
    async def invalidation_worker(self, bus: EventBus) -> AsyncIterator[None]:
        """Drop entries named on ``MEMBERSHIP_CHANNEL`` while open. Shared: the first user subscribes.

        When the bus cannot be reached at start-up the service starts anyway (the TTL bounds staleness)
        and the subscription is retried in the background.
        """
        self._workers += 1
        if self._workers == 1 and self.enabled:
            self._subscriber = asyncio.get_running_loop().create_task(
                self._subscribe(bus), name="membership-invalidation"
            )
            # Give a healthy bus the chance to confirm before the first request is served.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._subscriber), self._startup_wait_seconds)
        try:
            yield
        finally:
            self._workers -= 1
            if self._workers == 0:
                await self._stop_worker()

    async def _subscribe(self, bus: EventBus) -> None:
        while True:
            try:
                # A gap (the bus lost events while subscribed): changes may have been missed, as here.
                self._subscription = await bus.subscribe(
                    [MEMBERSHIP_CHANNEL], self._on_change, on_gap=self.clear
                )
            except Exception as exc:
                _log.warning("membership_subscribe_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._resubscribe_seconds)
                continue
            # Anything that changed while we were not listening may still be cached.
            self.clear()
            return

    async def _stop_worker(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
            self._subscriber = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.close()
            self._subscription = None
