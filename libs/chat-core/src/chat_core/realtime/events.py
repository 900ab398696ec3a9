"""The event bus's wire format: what the message service publishes and what its readers decode.

Publishers (``message_service.fanout``) and readers (the sockets in ``message_service.realtime``, the
membership caches in ``chat_core.membership``) import their shapes from here, so the two ends cannot drift.

* Conversation and user channels carry an ``Envelope``: the client-facing event plus what sockets need to
  route it (``members``, so a socket whose user was removed drops the event even if it missed the
  ``conversation.left``) and the W3C ``trace``; neither is forwarded to clients.
* ``MEMBERSHIP_CHANNEL`` carries ``MembershipChanged`` (``{"conversationId": ...}``).
* ``DELETIONS_CHANNEL`` carries ``MessageGone`` (``{"conversationId": ..., "messageId": ...}``): every
  image proxy drops what it remembers of the message.
"""

from __future__ import annotations

import msgspec

from chat_core.messagestore import Message

__all__ = [
    "Envelope",
    "MembershipChanged",
    "MessageGone",
    "bus_event_for_client",
    "decode_envelope",
    "decode_membership_changed",
    "decode_message_gone",
    "encode",
]


class Envelope(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """What travels on a conversation's or a user's channel."""

    type: str
    conversation_id: str
    message: Message | None = None  # message.created, .updated, .edited: the full stored message
    message_id: str | None = None  # message.read, message.deleted
    user_id: str | None = None  # message.read: the reader
    read_by: tuple[str, ...] | None = None  # message.read
    index: int | None = None  # message.updated of an album: the image that changed (0-based)
    members: tuple[str, ...] | None = None  # never forwarded to clients
    trace: dict[str, str] = {}  # never forwarded to clients


class MembershipChanged(msgspec.Struct, frozen=True, rename="camel"):
    """Someone joined or left: every process drops its cached membership of the conversation."""

    conversation_id: str


class MessageGone(msgspec.Struct, frozen=True, rename="camel"):
    """A message was deleted: every process forgets what it cached of it (the image proxy's lookups)."""

    conversation_id: str
    message_id: str


_ENVELOPE = msgspec.json.Decoder(Envelope)
_MESSAGE_GONE = msgspec.json.Decoder(MessageGone)
_MEMBERSHIP_CHANGED = msgspec.json.Decoder(MembershipChanged)


def decode_message_gone(payload: bytes) -> MessageGone | None:
    try:
        return _MESSAGE_GONE.decode(payload)
    except msgspec.DecodeError:
        return None


def encode(event: Envelope | MembershipChanged | MessageGone) -> bytes:
    return msgspec.json.encode(event)


def bus_event_for_client(envelope: Envelope) -> bytes:
    """The event as a client receives it: without routing fields."""
    return msgspec.json.encode(msgspec.structs.replace(envelope, members=None, trace={}))


def decode_envelope(payload: bytes) -> Envelope | None:
    try:
        return _ENVELOPE.decode(payload)
    except msgspec.DecodeError:
        return None


def decode_membership_changed(payload: bytes) -> MembershipChanged | None:
    try:
        return _MEMBERSHIP_CHANGED.decode(payload)
    except msgspec.DecodeError:
        return None
