"""Storage ledger: objects and bytes in the image store by kind (``raw`` uploads, ``derived`` images), kept
current from create and delete events rather than only by the cleanup scan.

Several media-processor replicas see the events, so the counts live in one shared place, the limit store
(``LIMIT_STORE``): a Redis hash in the cloud (``HINCRBY``, atomic across replicas and on a cluster, where
the hash is one key), the process's memory embedded. Who moves it:

* a raw upload's object-created event: ``raw`` +1 object, + its size (the media processor);
* a raw upload deleted: after processing, on refusal at arrival, as an overwrite of a finished one;
* derivatives written: ``derived`` + each variant, once per finished message;
* the orphan cleanup scan: sets both kinds to what it counted (``reconcile``), which also corrects the
  drift events cannot see (a redelivered event, a second PUT to one upload URL, S3 lifecycle expiry).

Each process holding the ledger refreshes ``chat_storage_objects`` / ``chat_storage_bytes`` from it every
``REFRESH_SECONDS``: every replica exports the same shared value, so dashboards take ``max()`` over them,
never ``sum()``. The ledger is a measurement: a store that is down is logged and skipped, never an error
for the upload or the job that moved it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Literal, Protocol

import msgspec
import structlog

from chat_core import keys, metrics

__all__ = [
    "KINDS",
    "Kind",
    "StorageLedger",
    "Tally",
    "Usage",
    "kind_of",
    "record",
    "refresh_gauges",
    "refreshing",
]

Kind = Literal["raw", "derived"]
KINDS: tuple[Kind, ...] = ("raw", "derived")
REFRESH_SECONDS = 5.0
_log = structlog.get_logger("chat_core.ledger")


class Usage(msgspec.Struct, frozen=True):
    objects: int = 0
    bytes: int = 0


def kind_of(key: str) -> Kind | None:
    """``raw`` for an upload key, ``derived`` for a derivative's, None for anything else (refusal notes,
    objects that are not ours)."""
    try:
        keys.parse_stored_key(key)
    except keys.InvalidKey:
        pass
    else:
        return "raw"
    try:
        keys.parse_derivative_key(key)
    except keys.InvalidKey:
        return None
    return "derived"


class Tally:
    """Objects and bytes by kind, counted one listed object at a time (a scan's side of ``reconcile``)."""

    def __init__(self) -> None:
        self._counts: dict[Kind, list[int]] = {kind: [0, 0] for kind in KINDS}

    def add(self, kind: Kind, objects: int, size: int) -> None:
        self._counts[kind][0] += objects
        self._counts[kind][1] += size

    def usage(self) -> dict[Kind, Usage]:
        return {kind: Usage(objects, size) for kind, (objects, size) in self._counts.items()}


class StorageLedger(Protocol):
    async def add(self, kind: Kind, objects: int, size: int) -> None:
        """Move ``kind`` by ``objects`` and ``size`` bytes (negative for deletions)."""
        ...

    async def usage(self) -> dict[Kind, Usage]:
        """Both kinds, never negative (a deletion counted before its creation reads as zero)."""
        ...

    async def reconcile(self, usage: Mapping[Kind, Usage]) -> None:
        """Set the kinds given to what a full scan counted."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def record(ledger: StorageLedger, kind: Kind, objects: int, size: int) -> None:
    """``ledger.add``, failing open: the ledger measures, it never fails the work it measures."""
    try:
        await ledger.add(kind, objects, size)
    except Exception as exc:
        metrics.STORAGE_LEDGER_ERRORS.inc()
        _log.warning("storage_ledger_unavailable", kind=kind, objects=objects, error=repr(exc))


async def refresh_gauges(ledger: StorageLedger) -> None:
    usage = await ledger.usage()
    for kind in KINDS:
        counted = usage.get(kind, Usage())
        metrics.STORAGE_OBJECTS.labels(kind).set(counted.objects)
        metrics.STORAGE_BYTES.labels(kind).set(counted.bytes)


@contextlib.asynccontextmanager
async def refreshing(ledger: StorageLedger, interval: float = REFRESH_SECONDS) -> AsyncIterator[None]:
    """Keep the storage gauges current from ``ledger`` while the context runs (a service worker)."""

    async def loop() -> None:
        while True:
            try:
                await refresh_gauges(ledger)
            except Exception as exc:
                metrics.STORAGE_LEDGER_ERRORS.inc()
                _log.debug("storage_ledger_unreadable", error=repr(exc))
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="storage-gauges")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
