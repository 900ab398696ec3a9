"""In-process storage ledger (``LIMIT_STORE=memory``): the embedded single-node adapter.

It starts from zero with the process; the embedded media processor reconciles it with a scan of the local
store at start-up (``MediaWorker``), and the cleanup scan does again whenever it runs in this process.
"""

from __future__ import annotations

from collections.abc import Mapping

from chat_core.ledger import KINDS, Kind, StorageLedger, Usage

__all__ = ["MemoryStorageLedger"]


class MemoryStorageLedger(StorageLedger):
    def __init__(self) -> None:
        self._counts: dict[Kind, list[int]] = {kind: [0, 0] for kind in KINDS}

    async def add(self, kind: Kind, objects: int, size: int) -> None:
        counts = self._counts[kind]
        counts[0] += objects
        counts[1] += size

    async def usage(self) -> dict[Kind, Usage]:
        return {kind: Usage(max(0, objects), max(0, size)) for kind, (objects, size) in self._counts.items()}

    async def reconcile(self, usage: Mapping[Kind, Usage]) -> None:
        for kind, counted in usage.items():
            self._counts[kind] = [counted.objects, counted.bytes]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
