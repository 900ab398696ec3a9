"""In-process EventBus and Presence: the embedded single-node adapters (``EVENT_BUS=memory``).

Same semantics as the Redis adapters within one process: a publish reaches every subscription whose
channels include it at the moment of the publish; presence is per connection with a TTL refreshed by
heartbeats, so a user is online while any of their connections is.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

import structlog

from chat_core.realtime import EventBus, EventHandler, GapHandler, Presence, Subscription

__all__ = ["MemoryEventBus", "MemoryPresence"]

_log = structlog.get_logger("chat_core.realtime.memory")


class _MemorySubscription(Subscription):
    __slots__ = ("_bus", "_channels", "_closed", "_handler")

    def __init__(self, bus: MemoryEventBus, handler: EventHandler) -> None:
        self._bus = bus
        self._handler = handler
        self._channels: set[str] = set()
        self._closed = False

    async def add(self, channels: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError("the subscription is closed")
        for channel in channels:
            if channel not in self._channels:
                self._channels.add(channel)
                self._bus._subscribers.setdefault(channel, set()).add(self)

    async def remove(self, channels: Iterable[str]) -> None:
        for channel in channels:
            if channel in self._channels:
                self._channels.discard(channel)
                self._bus._unsubscribe(channel, self)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.remove(list(self._channels))

    def deliver(self, channel: str, payload: bytes) -> None:
        try:
            self._handler(channel, payload)
        except Exception:
            # One broken subscriber must not keep an event from the others.
            _log.exception("event_handler_failed", channel=channel)


class MemoryEventBus(EventBus):
    name = "memory"
    readiness_name = "event_bus"

    def __init__(self) -> None:
        self._subscribers: dict[str, set[_MemorySubscription]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subscribers.clear()

    async def ping(self) -> None:
        return None

    async def publish(self, channel: str, payload: bytes) -> None:
        for subscription in list(self._subscribers.get(channel, ())):
            subscription.deliver(channel, payload)

    async def subscribe(
        self, channels: Iterable[str], handler: EventHandler, *, on_gap: GapHandler | None = None
    ) -> _MemorySubscription:
        # In one process a publish reaches its subscribers directly or not at all: there is no gap.
        subscription = _MemorySubscription(self, handler)
        await subscription.add(channels)
        return subscription

    def _unsubscribe(self, channel: str, subscription: _MemorySubscription) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[channel]


class MemoryPresence(Presence):
    name = "memory"
    readiness_name = "presence"

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._connections: dict[str, dict[str, float]] = {}  # user -> connection -> expiry (monotonic)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._connections.clear()

    async def ping(self) -> None:
        return None

    async def heartbeat(self, user_id: str, connection_id: str) -> None:
        self._connections.setdefault(user_id, {})[connection_id] = time.monotonic() + self._ttl

    async def disconnect(self, user_id: str, connection_id: str) -> None:
        connections = self._connections.get(user_id)
        if connections is not None:
            connections.pop(connection_id, None)
            if not connections:
                del self._connections[user_id]

    async def forget(self, user_id: str) -> None:
        self._connections.pop(user_id, None)

    async def online(self, user_ids: Collection[str]) -> set[str]:
        now = time.monotonic()
        present: set[str] = set()
        for user_id in user_ids:
            connections = self._connections.get(user_id)
            if not connections:
                continue
            for connection_id, expires_at in list(connections.items()):
                if expires_at <= now:
                    del connections[connection_id]  # a socket that died without saying goodbye
            if connections:
                present.add(user_id)
            else:
                del self._connections[user_id]
        return present
