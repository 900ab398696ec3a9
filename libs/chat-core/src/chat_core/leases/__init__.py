"""Write leases: at most one writer of a thing per interval across every replica.

``WriteLeases.acquire(name, seconds)`` is true for exactly one caller per ``name`` until ``seconds`` have
passed (the lease is never released early: it spaces writes, it does not guard a critical section).
The conversation summary uses it so that a busy conversation's document is written at most once per
second by all pods together (Firestore sustains about one write per second per document).

Adapters (``LIMIT_STORE``): ``redis`` (``SET key NX PX``, one key per name tagged for Redis Cluster) and
``memory`` (in-process: one node is every replica).
"""

from __future__ import annotations

from typing import Protocol

from chat_core.redis_keys import conversation_tag

__all__ = ["WriteLeases", "summary_lease"]


def summary_lease(conversation_id: str) -> str:
    """The lease name of a conversation's summary write (``lastMessage``/``updatedAt``)."""
    return "summary:" + conversation_tag(conversation_id)


class WriteLeases(Protocol):
    async def acquire(self, name: str, seconds: float) -> bool:
        """Take the lease on ``name`` for ``seconds`` unless someone holds it. Raises when the store cannot
        answer (callers decide whether to write anyway)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...
