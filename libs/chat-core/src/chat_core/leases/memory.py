"""In-process write leases (``LIMIT_STORE=memory``): the embedded single node is every replica."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat_core.backends import Backends

__all__ = ["MemoryWriteLeases", "create"]


class MemoryWriteLeases:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    async def acquire(self, name: str, seconds: float) -> bool:
        now = time.monotonic()
        if self._until.get(name, 0.0) > now:
            return False
        if len(self._until) > 10_000:  # forget lapsed leases now and then
            self._until = {key: until for key, until in self._until.items() if until > now}
        self._until[name] = now + seconds
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def create(_backends: Backends) -> MemoryWriteLeases:
    return MemoryWriteLeases()
