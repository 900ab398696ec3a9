"""In-process write leases (``LIMIT_STORE=memory``): the embedded single node is every replica."""

from __future__ import annotations

import time

from chat_core.leases import WriteLeases

__all__ = ["MemoryWriteLeases"]


class MemoryWriteLeases(WriteLeases):
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
