"""ObjectStore port: where image bytes live.

Adapters: ``s3.S3ObjectStore`` (production; LocalStack in tests) and ``local.LocalObjectStore`` (embedded
default: files under one data dir, HMAC-signed URLs served by the process itself). Both pass one contract
suite (``tests/contract/test_objectstore_contract.py``).

Keys here are *stored* keys, e.g. ``uploads/{conversation_id}/{object_key}`` (see ``chat_core.keys``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import msgspec

__all__ = [
    "ByteRange",
    "ObjectChanged",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectRead",
    "ObjectStore",
    "PresignedUpload",
    "RangeNotSatisfiable",
]


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    size: int
    content_type: str
    etag: str  # quoted, as in HTTP
    last_modified: dt.datetime  # tz-aware UTC


class PresignedUpload(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    method: str  # always "PUT"
    headers: dict[str, str]  # what the client must send with the PUT (Content-Type, maybe Content-Length)
    expires_at: dt.datetime


class ByteRange(msgspec.Struct, frozen=True):
    """Inclusive byte range as in ``Range: bytes=start-end``; ``end=None`` means to the end."""

    start: int
    end: int | None = None


class ObjectRead(msgspec.Struct, frozen=True, kw_only=True):
    """An open read: ``info`` of the whole object, the range actually served, and its body."""

    info: ObjectInfo
    start: int
    end: int  # inclusive
    body: AsyncIterator[bytes]

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class ObjectNotFound(LookupError):
    pass


class ObjectChanged(Exception):
    """The object's ETag is not the one a read was pinned to (``If-Match`` failed)."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"{key} no longer has the ETag {expected}")
        self.key = key
        self.expected = expected


class RangeNotSatisfiable(ValueError):
    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for an object of {size} bytes")
        self.size = size


class ObjectStore(Protocol):
    """Image bytes. Every call is non-blocking: async I/O, or bounded threads for the local disk."""

    name: str  # "s3" or "local": shown by readiness checks and logs

    async def start(self) -> None:
        """Open clients and resolve credentials; no request is served before this returns."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the store answers (readiness)."""

    def presign_put(
        self, key: str, *, content_type: str, content_length: int | None, expires_in: int
    ) -> PresignedUpload:
        """A URL a client PUTs the bytes to. Content type (and length, when known) are signed in."""

    def presign_get(
        self,
        key: str,
        *,
        expires_in: int,
        signed_at: dt.datetime | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> str:
        """A short-lived GET URL. The same ``signed_at`` gives the same URL (browser caching)."""

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def read_prefix(self, key: str, length: int) -> tuple[ObjectInfo, bytes] | None:
        """Info and the first ``length`` bytes in one round trip (a ranged GET); None when missing."""

    async def read(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        """The whole object and its info, in one request.

        With ``if_match`` (an ETag, quoted as ``head`` gives it) the read is pinned to that version:
        raises ObjectChanged when the object now has another ETag. Raises ObjectNotFound.
        """

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectRead:
        """Stream the object (or a range). Raises ObjectNotFound / RangeNotSatisfiable."""

    async def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        """Server-side write (tests, tooling)."""

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        """A server-side copy of ``source`` (bytes and content type) to ``destination``; the bytes never
        pass through this process on S3 (CopyObject). Overwrites ``destination``; the two are
        independent afterwards (deleting one leaves the other). Raises ObjectNotFound."""

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""

    def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix`` in key order, streamed page by page (memory flat in their count).

        ``content_type`` is empty here: S3's listing does not carry it (``head`` does).
        """
