"""The outbox port: what the relay still has to publish."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Protocol

from chat_core.chatstore.events import OutboxEntry


class OutboxStore(Protocol):
    """The event outbox: what the relay still has to publish (the changes' methods write the entries).

    Every method that changes what a client sees takes the entry announcing it (``event=``) and commits it
    in the change's own transaction; inside an adapter one helper of its base appends it
    (``FirestoreBase._append_event``, ``sqlite.base.append_event``).
    """

    async def pending_outbox(self, *, older_than: float, limit: int) -> list[OutboxEntry]:
        """Entries created more than ``older_than`` seconds ago, oldest first (claimed or not)."""

    async def claim_outbox(self, *, older_than: float, limit: int, lease: dt.timedelta) -> list[OutboxEntry]:
        """Claim up to ``limit`` entries created more than ``older_than`` seconds ago that nobody holds.

        Oldest first. Each returned entry is held by this call for ``lease``: no other claim returns it until
        the lease lapses (its holder died) or it is released; entries held by others are skipped, not waited
        for. So relay replicas share the outbox instead of each relaying all of it. Atomic per entry.
        """

    async def release_outbox(self, event_ids: Collection[str]) -> None:
        """Give up claims on entries not delivered, so the next claim (any replica's) takes them at once."""

    async def delete_outbox(self, event_ids: Collection[str]) -> None: ...

    async def outbox_stats(self) -> tuple[int, dt.datetime | None]:
        """(pending entries, creation time of the oldest)."""
