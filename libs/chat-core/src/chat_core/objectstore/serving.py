"""Serving an object over HTTP with conditional and range requests (RFC 9110 §13, §14).

One piece of code for the two places that stream stored bytes to a client: the image proxy's stream mode
and the local object store's signed GET route.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from email.utils import format_datetime
from typing import Any, Literal, NamedTuple

from litestar import Response
from litestar.response import Stream

from chat_core.keys import EXTENSIONS
from chat_core.objectstore import ByteRange, ObjectInfo, ObjectNotFound, ObjectStore, RangeNotSatisfiable

__all__ = [
    "BYTES_CSP",
    "Served",
    "byte_safety_headers",
    "etag_matches",
    "object_headers",
    "parse_range",
    "serve_object",
]

# At most 18 digits a position: beyond any object's size, and a longer one (thousands of digits) is
# ignored as invalid syntax instead of costing a huge int() conversion or failing it.
_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
Outcome = Literal["ok", "partial", "not_modified"]
# Stored bytes are never a page of ours: nothing they contain may run, load or be sniffed into HTML.
BYTES_CSP = "default-src 'none'; sandbox"
_FIXED = ("X-Content-Type-Options", "Content-Security-Policy")
_INLINE_TYPES = frozenset(EXTENSIONS)  # the image types a browser may show in place
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def byte_safety_headers(key: str, media_type: str) -> dict[str, str]:
    """Headers every response carrying stored bytes gets: ``nosniff``, a CSP that forbids everything,
    and ``Content-Disposition``: ``inline`` for an image, ``attachment`` for anything else, with the key's
    last segment as a filename reduced to safe characters."""
    name = _UNSAFE_NAME_CHARS.sub("_", key.rsplit("/", 1)[-1])[:128] or "download"
    disposition = "inline" if media_type in _INLINE_TYPES else "attachment"
    return {
        "Content-Disposition": f'{disposition}; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": BYTES_CSP,
    }


class Served(NamedTuple):
    response: Response[Any]
    outcome: Outcome


def parse_range(header: str, size: int) -> ByteRange | None:
    """The one byte range a ``Range`` header asks of an object of ``size`` bytes.

    None means "ignore the header and send everything" (not bytes, several ranges, or invalid syntax:
    RFC 9110 lets a server ignore those). Raises RangeNotSatisfiable when no byte of the object is asked.
    """
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match[1], match[2]
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    end = int(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, size - 1 if end is None else min(end, size - 1))


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison, as ``If-None-Match`` uses (RFC 9110 §13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == ours for candidate in if_none_match.split(","))


def object_headers(info: ObjectInfo) -> dict[str, str]:
    return {
        "ETag": info.etag,
        "Last-Modified": format_datetime(info.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
    }


async def serve_object(
    store: ObjectStore,
    key: str,
    request_headers: Mapping[str, str],
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    safe_types: Collection[str] | None = None,
) -> Served:
    """200, 206 or 304 for ``key``; raises ObjectNotFound, or RangeNotSatisfiable (answer 416).

    ``content_type`` overrides the stored type; a stored type outside ``safe_types`` (when given) is sent
    as ``application/octet-stream``, so nothing but an allowed image is ever rendered from our origin.
    A plain GET is one store round trip; a conditional or range request adds a ``head`` first, so a 304
    or a 416 never opens the body.
    """
    extra = dict(headers or {})
    range_header = request_headers.get("range")
    if_none_match = request_headers.get("if-none-match")
    byte_range: ByteRange | None = None
    if range_header or if_none_match:
        info = await store.head(key)
        if info is None:
            raise ObjectNotFound(key)
        if if_none_match and etag_matches(if_none_match, info.etag):
            safety = byte_safety_headers(key, content_type or info.content_type)
            headers_304 = {**object_headers(info), **safety, **extra}
            headers_304.update({name: safety[name] for name in _FIXED})
            return Served(Response(b"", status_code=304, headers=headers_304), "not_modified")
        if_range = request_headers.get("if-range")
        if range_header and (if_range is None or if_range.strip() == info.etag):
            byte_range = parse_range(range_header, info.size)
    read = await store.open(key, byte_range)
    response_headers = {
        **object_headers(read.info),
        "Content-Length": str(read.length),
        **extra,
    }
    media_type = content_type or read.info.content_type or "application/octet-stream"
    if content_type is None and safe_types is not None and media_type not in safe_types:
        media_type = "application/octet-stream"
    safety = byte_safety_headers(key, media_type)
    # A signed override may name the disposition; nosniff and the CSP are never overridden.
    response_headers = {**safety, **response_headers, **{name: safety[name] for name in _FIXED}}
    status = 200
    if byte_range is not None:
        status = 206
        response_headers["Content-Range"] = f"bytes {read.start}-{read.end}/{read.info.size}"
    return Served(
        Stream(
            read.body,
            status_code=status,
            media_type=media_type,
            headers=response_headers,
        ),
        "partial" if status == 206 else "ok",
    )
