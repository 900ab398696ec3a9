"""The Firestore chat store's base: one client for every concern, its lifecycle, reads in pages."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1 import AsyncClient
from google.cloud.firestore_v1.async_batch import AsyncWriteBatch
from google.cloud.firestore_v1.async_collection import AsyncCollectionReference
from google.cloud.firestore_v1.async_document import AsyncDocumentReference
from google.cloud.firestore_v1.async_query import AsyncQuery
from google.cloud.firestore_v1.base_document import DocumentSnapshot
from google.cloud.firestore_v1.base_query import BaseQuery

from chat_core.chatstore import (
    OutboxEntry,
    Page,
    decode_cursor,
    page_of,
)
from chat_core.chatstore.firestore.documents import (
    CONVERSATIONS,
    OUTBOX,
    outbox_fields,
    outbox_shard,
)
from chat_core.settings import FirestoreSettings
from chat_core.timestamps import Clock, utc_now

T = TypeVar("T")
_PAGE = 200  # documents per read of the lifecycle jobs' scans
OPTIMISTIC_ATTEMPTS = 8
_EMULATOR_VARIABLE = "FIRESTORE_EMULATOR_HOST"
_DESCENDING = BaseQuery.DESCENDING
# What the client raises when Firestore cannot answer now (unreachable, overloaded, contention, its own
# retries given up): a 503 worth a retry. Anything else it raises is a bug of ours (a 500).
_OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.ResourceExhausted,
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.RetryError,
)


@contextlib.contextmanager
def _emulator_environment(emulator_host: str) -> Iterator[None]:
    """``FIRESTORE_EMULATOR_HOST`` as the settings say, while a client is built.

    The variable is the client's one public switch to the emulator (an insecure channel, no credentials),
    and the client reads it in its constructor only. Settings are the single source of truth (two stores
    in one process may point at two emulators, or one at production), so the variable holds the settings'
    value for the constructor's duration and is put back after. Nothing awaits in between: no other task
    of this event loop can see the temporary value.
    """
    before = os.environ.get(_EMULATOR_VARIABLE)
    if emulator_host:
        os.environ[_EMULATOR_VARIABLE] = emulator_host
    else:
        os.environ.pop(_EMULATOR_VARIABLE, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_EMULATOR_VARIABLE, None)
        else:
            os.environ[_EMULATOR_VARIABLE] = before


async def newest_first(
    source: AsyncQuery | AsyncCollectionReference,
    *,
    time_field: str,
    cursor: str | None,
    limit: int,
    decode: Callable[[DocumentSnapshot[Any]], T],
    position: Callable[[T], tuple[dt.datetime, str]],
) -> Page[T]:
    """One page of ``source``, newest first on (``time_field``, document id), after ``cursor``.

    Raises InvalidCursor."""
    after = decode_cursor(cursor) if cursor is not None else None
    query = source.order_by(time_field, direction=_DESCENDING).order_by("__name__", direction=_DESCENDING)
    if after is not None:
        query = query.start_after([after[0], after[1]])
    rows = [decode(snapshot) async for snapshot in query.limit(limit + 1).stream()]
    return page_of(rows, limit, position)


async def pages(query: Any) -> AsyncIterator[DocumentSnapshot[Any]]:
    """Every document of ``query``, read ``_PAGE`` at a time (short reads; the caller may write between)."""
    last: DocumentSnapshot[Any] | None = None
    while True:
        page = query.start_after(last) if last is not None else query
        snapshots = [snapshot async for snapshot in page.limit(_PAGE).stream()]
        for snapshot in snapshots:
            yield snapshot
        if len(snapshots) < _PAGE:
            return
        last = snapshots[-1]


class FirestoreBase:
    """The one AsyncClient every concern of the Firestore chat store works through, and its plumbing."""

    name = "firestore"
    readiness_name = "firestore"
    outage_code = "store_unavailable"
    outage_errors = _OUTAGE_ERRORS

    def __init__(self, settings: FirestoreSettings, *, clock: Clock = utc_now) -> None:
        self._settings = settings
        self._clock = clock
        self._client: AsyncClient | None = None

    def is_outage(self, exc: Exception) -> bool:
        return isinstance(exc, _OUTAGE_ERRORS)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the Firestore message store is not started")
        return self._client

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            return
        settings = self._settings
        with _emulator_environment(settings.emulator_host):
            if settings.emulator_host:
                client = AsyncClient(
                    project=settings.project_id,
                    database=settings.database,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                )
            else:
                client = AsyncClient(project=settings.project_id, database=settings.database)
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._conversation_ref("-ping-").get(field_paths=["createdAt"], timeout=2.0)

    # --- plumbing ---------------------------------------------------------------------------------
    def _conversation_ref(self, conversation_id: str) -> AsyncDocumentReference:
        return self.client.collection(CONVERSATIONS).document(conversation_id)

    def _outbox_ref(self, event_id: str) -> AsyncDocumentReference:
        return self.client.collection(OUTBOX).document(event_id)

    def _append_event(self, batch: AsyncWriteBatch, event: OutboxEntry) -> None:
        """The one way an entry enters the outbox: in the batch of the change it announces (create():
        an event id is never written twice), in the shard its id hashes to."""
        batch.create(
            self._outbox_ref(event.event_id), {**outbox_fields(event), "shard": outbox_shard(event.event_id)}
        )
