"""The event outbox's bus side: what each kind of entry publishes, shared by every service that relays.

A change and the ``OutboxEntry`` announcing it commit in one store transaction
(``chat_core.messagestore``); then two things may publish the entry:

* the **immediate attempt** of the process that made the change (the message service for sends, read
  receipts and membership; the media processor for ``message.updated``): publish, then delete the entry;
* the **relay** (``message_service.fanout``), for every entry the immediate attempt left behind: the bus
  was down, the process died, the delete failed. It dispatches on the kind: ``message.created`` also
  queues notifications and media jobs, every kind publishes through ``publish`` here.

So an outage delays an event and never loses it; an event may be published twice (a crash between the
publish and the delete), which clients absorb (events carry ids; a message only moves forward).

What each kind puts on the bus (``bus_events``), with the wire names clients have always received:

* ``message.created`` / ``message.updated``: the event of that name with the message, on the conversation's
  channel;
* ``message.read``: ``message.read`` with ``messageId``, ``userId`` (the reader) and ``readBy``, on the
  conversation's channel;
* ``message.deleted``: ``{"conversationId", "messageId"}`` on ``deletions`` first (every image proxy
  forgets the message), then ``message.deleted`` with ``messageId`` on the conversation's channel;
* ``message.edited``: ``message.edited`` with the message as edited, on the conversation's channel;
* ``membership.changed``: ``{"conversationId"}`` on ``membership`` (every process drops its cached
  membership), then ``conversation.joined`` on each added user's channel and ``conversation.left`` on each
  removed user's.
"""

from __future__ import annotations

import msgspec
import structlog
from opentelemetry.trace import SpanKind

from chat_core import metrics, tracing
from chat_core.messagestore import ConversationStore, OutboxEntry, OutboxStore
from chat_core.realtime import (
    DELETIONS_CHANNEL,
    MEMBERSHIP_CHANNEL,
    EventBus,
    conversation_channel,
    user_channel,
)
from chat_core.realtime.events import Envelope, MembershipChanged, MessageGone, encode

__all__ = ["bus_events", "members_for", "publish", "publish_now"]

_log = structlog.get_logger("chat_core.outbox")
_tracer = tracing.get_tracer("chat_core.outbox")


def needs_members(entry: OutboxEntry) -> bool:
    """Whether the entry's events carry the conversation's members (sockets route by them)."""
    return entry.kind != "membership.changed"


async def members_for(conversations: ConversationStore, entry: OutboxEntry) -> frozenset[str]:
    """The members the entry's events are routed to, read now (empty when not needed or gone)."""
    if not needs_members(entry):
        return frozenset()
    return await conversations.get_participants(entry.conversation_id) or frozenset()


BusEvent = Envelope | MembershipChanged | MessageGone


def bus_events(entry: OutboxEntry, members: frozenset[str]) -> list[tuple[str, BusEvent]]:
    """(channel, event) pairs ``entry`` publishes, in order. The one place that maps kinds to the wire."""
    cid = entry.conversation_id
    routed = tuple(sorted(members))
    match entry.kind:
        case "message.created" | "message.updated" | "message.edited":
            return [
                (
                    conversation_channel(cid),
                    Envelope(
                        type=entry.kind,
                        conversation_id=cid,
                        message=entry.message,
                        members=routed,
                        index=entry.index if entry.kind == "message.updated" else None,
                    ),
                )
            ]
        case "message.read":
            message = entry.message
            if message is None:
                raise ValueError("a message.read entry without its message")
            return [
                (
                    conversation_channel(cid),
                    Envelope(
                        type="message.read",
                        conversation_id=cid,
                        message_id=message.message_id,
                        user_id=entry.user_id,
                        read_by=message.read_by,
                        members=routed,
                    ),
                )
            ]
        case "message.deleted":
            message = entry.message
            if message is None:
                raise ValueError("a message.deleted entry without its message")
            return [
                # The proxies first: from now on no replica serves the image from what it remembered.
                (DELETIONS_CHANNEL, MessageGone(conversation_id=cid, message_id=message.message_id)),
                (
                    conversation_channel(cid),
                    Envelope(
                        type="message.deleted",
                        conversation_id=cid,
                        message_id=message.message_id,
                        members=routed,
                    ),
                ),
            ]
        case "membership.changed":
            # The caches first: a removed member loses access before being told.
            events: list[tuple[str, BusEvent]] = [
                (MEMBERSHIP_CHANNEL, MembershipChanged(conversation_id=cid))
            ]
            for users, kind in ((entry.added, "conversation.joined"), (entry.removed, "conversation.left")):
                events.extend(
                    (user_channel(user), Envelope(type=kind, conversation_id=cid)) for user in users
                )
            return events


async def publish(bus: EventBus, entry: OutboxEntry, members: frozenset[str]) -> None:
    """Publish everything ``entry`` announces, each event in its own producer span of the change's trace.

    Raises what the bus raises (``EventBusUnavailable``): the entry then stays for the relay.
    """
    with _tracer.start_as_current_span(
        "publish " + entry.kind,
        context=tracing.extract(entry.trace),
        kind=SpanKind.PRODUCER,
        attributes={"messaging.message.id": entry.event_id, "chat.conversation.id": entry.conversation_id},
    ):
        for channel, event in bus_events(entry, members):
            if isinstance(event, Envelope):
                event = msgspec.structs.replace(event, trace=tracing.inject())
                label = event.type
            elif isinstance(event, MessageGone):
                label = "deletion"
            else:
                label = "membership"
            await bus.publish(channel, encode(event))
            metrics.EVENTS_PUBLISHED.labels(label).inc()


async def publish_now(
    bus: EventBus, conversations: ConversationStore, outbox: OutboxStore, entry: OutboxEntry
) -> bool:
    """The immediate attempt after a change: publish ``entry`` and delete it from the outbox.

    False when either failed: the entry stays, and the relay publishes it (again, if only the delete
    failed) once it is older than the relay's grace. Never raises.
    """
    try:
        await publish(bus, entry, await members_for(conversations, entry))
    except Exception as exc:
        metrics.OUTBOX_RELAY_ERRORS.labels("bus").inc()
        _log_left(entry, exc)
        return False
    try:
        await outbox.delete_outbox([entry.event_id])
    except Exception as exc:
        metrics.OUTBOX_RELAY_ERRORS.labels("store").inc()
        _log_left(entry, exc)
        return False
    return True


def _log_left(entry: OutboxEntry, exc: Exception) -> None:
    _log.warning("event_left_to_the_relay", kind=entry.kind, event_id=entry.event_id, error=repr(exc))
