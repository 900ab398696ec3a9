"""EventBus and Presence ports: real-time fan-out to online members.

Adapters: ``redis`` (pub/sub, one channel per conversation; presence keys with a TTL) and ``memory``
(one process). Both pass one contract suite (``tests/contract/test_realtime_contract.py``).

Cost rules (docs/operations/scaling.md): one publish per chat message whatever the group size; the presence
of all members of a conversation in one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Protocol

__all__ = [
    "DELETIONS_CHANNEL",
    "MEMBERSHIP_CHANNEL",
    "EventBus",
    "EventBusUnavailable",
    "EventHandler",
    "GapHandler",
    "Presence",
    "Subscription",
    "conversation_channel",
    "user_channel",
]

EventHandler = Callable[[str, bytes], None]  # (channel, payload); must not block
# A subscription was interrupted and is whole again: events published meanwhile may be lost. Must not block.
GapHandler = Callable[[], None]

# Membership changes (JSON ``{"conversationId": ...}``), so every process drops its cached answer.
MEMBERSHIP_CHANNEL = "membership"
# Messages deleted (JSON ``{"conversationId": ..., "messageId": ...}``), so every image proxy forgets them.
DELETIONS_CHANNEL = "deletions"


def conversation_channel(conversation_id: str) -> str:
    return f"conv:{conversation_id}"


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


class EventBusUnavailable(ConnectionError):
    """The bus (or presence store) cannot be reached; the caller decides whether to retry or degrade."""


class Subscription(Protocol):
    """A set of channels delivered to one handler; channels can change while it is open."""

    __slots__ = ()  # one per open socket: adapters may use slots

    async def add(self, channels: Iterable[str]) -> None: ...

    async def remove(self, channels: Iterable[str]) -> None: ...

    async def close(self) -> None: ...


class EventBus(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None:
        """Deliver ``payload`` to every current subscriber of ``channel`` (at most once, best effort).

        Raises ``EventBusUnavailable`` when the bus cannot take it.
        """

    async def subscribe(
        self, channels: Iterable[str], handler: EventHandler, *, on_gap: GapHandler | None = None
    ) -> Subscription:
        """Once this returns (and once ``Subscription.add`` returns), publishes on those channels reach
        ``handler``. Raises ``EventBusUnavailable`` when the bus cannot confirm the subscription.

        A subscription outlives bus outages: the adapter resubscribes when the bus is back. Events
        published meanwhile are lost, so the subscriber is told: ``on_gap`` is called once per outage,
        when every channel the subscription held through it is confirmed again, before any event
        published after that reaches ``handler`` (the caller resyncs from the store then). Channels
        that move between nodes of a cluster are a gap too. An adapter that cannot lose events (one
        process) never calls it. Never called after ``close``."""


class Presence(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def heartbeat(self, user_id: str, connection_id: str) -> None:
        """Mark one connection of ``user_id`` online for the presence TTL."""

    async def disconnect(self, user_id: str, connection_id: str) -> None: ...

    async def forget(self, user_id: str) -> None:
        """Drop every connection of ``user_id`` at once (an erased user), instead of waiting for the TTL.

        Raises ``EventBusUnavailable`` when presence cannot be written.
        """

    async def online(self, user_ids: Collection[str]) -> set[str]:
        """Which of ``user_ids`` have at least one live connection, in one round trip.

        Raises ``EventBusUnavailable`` when presence cannot be read.
        """
