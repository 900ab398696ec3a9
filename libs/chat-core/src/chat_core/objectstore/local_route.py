"""The HTTP route of the local object store: ``/_storage/{key}``, where its presigned links point.

It enforces what S3 enforces, with the same statuses and S3's XML error bodies (clients treat it as the
bucket): the method, the expiry, the signed content type and length (403), a missing length (411), a body
over the limit (413). Uploads stream to disk under the grant's limits; downloads go through
``serving.serve_object`` (ranges, ETags, and the safety headers every stored byte gets).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from xml.sax.saxutils import escape

import anyio
import anyio.to_thread
from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.exceptions import InternalServerException
from litestar.params import FromPath

from chat_core.objectstore import ObjectNotFound, ObjectStore, RangeNotSatisfiable
from chat_core.objectstore.local_signing import (
    STORAGE_ROUTE,
    Grant,
    InvalidObjectKey,
    Refusal,
    UrlSigner,
    key_segments,
)
from chat_core.objectstore.serving import serve_object

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

__all__ = ["LocalStorage", "ReceivedUpload", "storage_route"]

T = TypeVar("T")


class ReceivedUpload(Protocol):
    """A file being written for one PUT (``local.Upload``); each call blocks (run it on the store's pool)."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def commit(self, content_type: str) -> object: ...

    def abort(self) -> None: ...

    def etag(self) -> str: ...


class LocalStorage(ObjectStore, Protocol):
    """What the route needs of the store it serves (``local.LocalObjectStore``): the route imports no
    store, so the store can import the route (it serves it)."""

    @property
    def signer(self) -> UrlSigner: ...

    @property
    def max_bytes(self) -> int: ...

    @property
    def limiter(self) -> anyio.CapacityLimiter: ...

    async def run(self, func: Callable[..., T], *args: Any) -> T: ...

    async def announce(self, key: str) -> None: ...

    def open_upload(self, key: str) -> ReceivedUpload: ...


_WRITE_BUFFER = 1024 * 1024
_DECIMAL = re.compile(r"[0-9]{1,18}")  # str.isdigit() also takes "²" and thousands of digits


def _s3_error(status: int, code: str, message: str) -> Response[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body.encode(), status_code=status, media_type="application/xml")


def storage_route(store: LocalStorage) -> HTTPRouteHandler:
    @route(
        f"{STORAGE_ROUTE}/{{key:path}}",
        http_method=[HttpMethod.GET, HttpMethod.PUT],
        include_in_schema=False,
        request_max_body_size=None,  # enforced below against the signed length and MAX_IMAGE_BYTES
    )
    async def local_storage(request: Request[Any, Any, Any], key: FromPath[str]) -> Response[Any]:
        key = key.removeprefix("/")
        try:
            key_segments(key)
            grant = store.signer.verify(request, key)
            if request.method == HttpMethod.PUT:
                etag = await _receive(store, request, key, grant)
                await store.announce(key)
                return Response(b"", status_code=200, headers={"ETag": etag})
            overrides = dict(grant.overrides)
            content_type = overrides.pop("content-type", None)
            served = await serve_object(
                store,
                key,
                request.headers,
                headers={name.title(): value for name, value in overrides.items()},
                content_type=content_type,
            )
            return served.response
        except InvalidObjectKey as exc:
            return _s3_error(400, "InvalidObjectName", str(exc))
        except Refusal as refusal:
            return _s3_error(refusal.status, refusal.code, refusal.message)
        except ObjectNotFound:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        except RangeNotSatisfiable as exc:
            response = _s3_error(416, "InvalidRange", "The requested range is not satisfiable")
            response.headers["Content-Range"] = f"bytes */{exc.size}"
            return response

    return local_storage


async def _receive(store: LocalStorage, request: Request[Any, Any, Any], key: str, grant: Grant) -> str:
    """Stream the body to disk under the grant's limits; the new object's ETag."""
    if request.headers.get("content-type", "") != grant.content_type:
        raise Refusal(403, "SignatureDoesNotMatch", "Content-Type is not the signed one")
    declared = request.headers.get("content-length")
    if declared is None or not _DECIMAL.fullmatch(declared):
        raise Refusal(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    length = int(declared)
    if grant.content_length is not None and length != grant.content_length:
        raise Refusal(403, "SignatureDoesNotMatch", "Content-Length is not the signed one")
    if length > store.max_bytes:
        raise Refusal(413, "EntityTooLarge", f"Your proposed upload exceeds {store.max_bytes} bytes")
    upload = await store.run(store.open_upload, key)
    try:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= _WRITE_BUFFER:
                await store.run(upload.write, bytes(buffer))
                buffer.clear()
            if upload.size + len(buffer) > length:
                raise Refusal(400, "IncompleteBody", "More bytes than Content-Length")
        await store.run(upload.write, bytes(buffer))
        if upload.size != length:
            raise Refusal(400, "IncompleteBody", "Fewer bytes than Content-Length")
        await store.run(upload.commit, grant.content_type)
    except InternalServerException:  # the client went away mid-body
        await store.run(upload.abort)
        raise Refusal(400, "IncompleteBody", "The upload was interrupted") from None
    except BaseException:
        await anyio.to_thread.run_sync(upload.abort, limiter=store.limiter, abandon_on_cancel=False)
        raise
    return upload.etag()
