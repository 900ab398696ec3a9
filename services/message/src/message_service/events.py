"""The message service's one seam to real-time fan-out and notifications.

The conversation and message logic calls a ``MessageEvents`` after each change is durably stored; what
happens then (publish on the event bus, enqueue notifications for offline members, membership-change
events) is the fan-out's business, not this service's.

Guarantees the caller gives:

* ``message_created`` runs once per newly stored message, never for an idempotent replay, after the
  message and its outbox entry were written in one transaction. Whatever it does or fails to do, the
  outbox entry stays until someone deletes it, so an implementation may publish and enqueue inline and
  delete the entry, or leave everything to a relay that drains the outbox.
* ``message_changed`` runs once per deletion or edit, after the change and its ``deleted``/``edited``
  outbox entry were written in one transaction (never for a delete of a tombstone); as above, the entry
  stays until someone deletes it.
* ``message_read`` runs only when ``reader_id`` was newly added to ``readBy``.
* ``participants_changed`` runs after a conversation is created (``added`` = every member) and after
  members are added or removed, with exactly who changed.
* Every call is awaited inside the request, after the change is stored: keep it quick. An exception is
  logged and swallowed (the response is already decided by the stored change).
"""

from __future__ import annotations

from typing import Protocol

from chat_core.messagestore import Message, OutboxEntry

__all__ = ["MessageEvents"]


class MessageEvents(Protocol):
    async def message_created(self, entry: OutboxEntry, members: frozenset[str]) -> None:
        """``members``: the conversation's members as the send read them (so fan-out need not)."""

    async def message_changed(self, entry: OutboxEntry) -> None:
        """A deletion or an edit (``entry.kind``), with the entry stored with it."""

    async def message_read(self, conversation_id: str, message: Message, reader_id: str) -> None: ...

    async def participants_changed(
        self, conversation_id: str, added: frozenset[str], removed: frozenset[str]
    ) -> None: ...
