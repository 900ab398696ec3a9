"""The message service's one seam to real-time fan-out and notifications.

The conversation and message logic calls a ``MessageEvents`` after each change is durably stored; what
happens then (publish on the event bus, enqueue notifications for offline members, membership-change
events) is the fan-out's business, not this service's. Each change was stored together with its event
outbox entry (``chat_core.outbox``), so the seam is an immediate attempt: what it fails to do, the relay
does later.

Guarantees the caller gives:

* ``message_created`` runs once per newly stored message, never for an idempotent replay, after the
  message and its outbox entry were written in one transaction. Whatever it does or fails to do, the
  outbox entry stays until someone deletes it, so an implementation may publish and enqueue inline and
  delete the entry, or leave everything to a relay that drains the outbox.
* ``event_stored`` runs once per other event the service stored with its change (``message.read`` when
  a reader was newly added to ``readBy``; ``membership.changed`` after a conversation is created, with
  every member added, and after members are added or removed; ``message.deleted`` after an unsend,
  never for a tombstone deleted again; ``message.edited`` after an edit), with the entry as stored. The
  entry stays in the outbox until someone deletes it, as for ``message_created``.
* Every call is awaited inside the request, after the change is stored: keep it quick. An exception is
  logged and swallowed (the response is already decided by the stored change).
"""

from __future__ import annotations

from typing import Protocol

from chat_core.chatstore import OutboxEntry

__all__ = ["MessageEvents"]


class MessageEvents(Protocol):
    async def message_created(self, entry: OutboxEntry, members: frozenset[str]) -> None:
        """``members``: the conversation's members as the send read them (so fan-out need not)."""

    async def event_stored(self, entry: OutboxEntry) -> None:
        """Any other kind (``chat_core.chatstore.EventKind``)."""
