"""Local-disk adapter of the ObjectStore port: the embedded default (``OBJECT_STORE=local``).

Objects are plain files under ``DATA_DIR/objects``, one per key; the content type and the ETag (MD5 of the
bytes, as S3 gives for single-part uploads) sit in a hidden sidecar ``.{name}.meta`` beside each file.
Writes go to a temporary file and are renamed into place, so a reader sees the old object or the new one,
never half of one. All file I/O runs on a bounded thread pool, never on the event loop.

Nothing can escape the directory: keys are checked segment by segment (no empty, ``.``-leading — which
covers ``..`` and our own hidden files — or control-character segments, no backslashes, no absolute keys),
files are opened with ``O_NOFOLLOW``, and no directory on the way may be a symlink.

Presigned URLs are HMAC-SHA256-signed links to this process's own route ``/_storage/{key}``. The route
enforces what S3 enforces, with the same statuses: the method, the expiry, the signed content type and
length (403), a missing length (411). The HMAC key is 32 random bytes created once in
``DATA_DIR/object-url-signing.key`` (mode 0600) and shared by every process using that data dir; it is
independent of the JWT secret, so rotating one never touches the other.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import hashlib
import hmac
import os
import secrets
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote
from xml.sax.saxutils import escape

import anyio
import anyio.to_thread
import msgspec
import structlog
from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.exceptions import InternalServerException
from litestar.params import FromPath

from chat_core.objectstore import (
    ByteRange,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectRead,
    PresignedUpload,
    RangeNotSatisfiable,
)
from chat_core.objectstore.s3 import RESPONSE_OVERRIDES
from chat_core.objectstore.serving import serve_object
from chat_core.settings import Settings

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from chat_core.backends import Backends

__all__ = ["STORAGE_ROUTE", "InvalidObjectKey", "LocalObjectStore", "create"]

T = TypeVar("T")
_log = structlog.get_logger("chat_core.objectstore.local")
STORAGE_ROUTE = "/_storage"
SIGNING_KEY_FILE = "object-url-signing.key"
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 200  # leaves room for the sidecar and temporary names within NAME_MAX (255)
_READ_CHUNK = 256 * 1024
_WRITE_BUFFER = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


class InvalidObjectKey(ValueError):
    """A key the local store refuses: it could name something outside the objects directory."""


class _Meta(msgspec.Struct, frozen=True):
    content_type: str
    etag: str


class _Signed(msgspec.Struct, frozen=True):
    """What a signed URL grants; its canonical JSON is what the HMAC covers."""

    method: str
    key: str
    expires: int
    content_type: str
    content_length: int | None
    overrides: list[tuple[str, str]]


class _Refusal(Exception):
    """An S3-style error answer of the storage route."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _s3_error(status: int, code: str, message: str) -> Response[bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return Response(body.encode(), status_code=status, media_type="application/xml")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_segments(key: str) -> list[str]:
    """The path segments of ``key``; raises InvalidObjectKey for anything that could leave the root."""
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise InvalidObjectKey("an object key must have 1 to 1024 bytes")
    segments = key.split("/")
    for segment in segments:
        if (
            not segment
            or segment.startswith(".")
            or "\\" in segment
            or len(segment.encode()) > _MAX_SEGMENT_BYTES
            or any(ord(char) < 32 or ord(char) == 127 for char in segment)
        ):
            raise InvalidObjectKey(f"object key {key!r} has a forbidden segment")
    return segments


class _Upload:
    """A file being written: a hidden temporary beside its final name, renamed into place on commit."""

    def __init__(self, store: LocalObjectStore, key: str) -> None:
        self.path = store._prepare_parent(key)
        self.temp = os.path.join(os.path.dirname(self.path), f".tmp-{uuid.uuid4().hex}")
        self.fd = os.open(self.temp, _CREATE_FLAGS, 0o644)
        self.md5 = hashlib.md5()  # noqa: S324 - an ETag, as S3 computes it; not security
        self.size = 0

    def write(self, data: bytes) -> None:
        self.md5.update(data)
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self, content_type: str) -> os.stat_result:
        os.fsync(self.fd)  # a 200 to the uploader means the bytes are on disk
        meta = msgspec.json.encode(_Meta(content_type=content_type, etag=f'"{self.md5.hexdigest()}"'))
        directory, name = os.path.split(self.path)
        meta_temp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
        meta_fd = os.open(meta_temp, _CREATE_FLAGS, 0o644)
        try:
            os.write(meta_fd, meta)
        finally:
            os.close(meta_fd)
        # The sidecar first: a reader that finds the new bytes finds their type too.
        os.replace(meta_temp, os.path.join(directory, f".{name}.meta"))
        os.replace(self.temp, self.path)
        result = os.fstat(self.fd)
        os.close(self.fd)
        return result

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


class LocalObjectStore:
    name = "local"
    readiness_name = "object_store"  # "local" alone would not tell an operator what is failing

    def __init__(self, settings: Settings, *, threads: int = 16) -> None:
        data_dir = os.path.abspath(settings.service.data_dir)
        self._root = os.path.join(data_dir, "objects")
        self._root_real = self._root
        self._key_file = os.path.join(data_dir, SIGNING_KEY_FILE)
        self._base_url = settings.service.base_url()
        self._max_bytes = settings.images.max_bytes
        self._limiter = anyio.CapacityLimiter(threads)
        self._signing_key: bytes | None = None
        self._upload_listeners: list[Callable[[ObjectInfo], Awaitable[None]]] = []

    def announce_uploads(self, listener: Callable[[ObjectInfo], Awaitable[None]]) -> None:
        """Call ``listener`` after each upload through a signed URL lands (S3's object-created event)."""
        self._upload_listeners.append(listener)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._run(self._start_sync)

    def _start_sync(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        self._root_real = os.path.realpath(self._root)
        self._signing_key = self._load_signing_key()

    def _load_signing_key(self) -> bytes:
        try:
            with open(self._key_file, "rb") as existing:
                key = base64.b64decode(existing.read().strip())
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        temp = f"{self._key_file}.{uuid.uuid4().hex}"
        fd = os.open(temp, _CREATE_FLAGS, 0o600)
        try:
            os.write(fd, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, self._key_file)  # atomic and exclusive: two processes starting agree on one key
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
        with open(self._key_file, "rb") as created:
            return base64.b64decode(created.read().strip())

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        if not await self._run(os.access, self._root, os.W_OK):
            raise OSError(f"{self._root} is not writable")

    async def ensure_bucket(self, cors_origins: tuple[str, ...]) -> None:
        # The storage route is part of the app, so the app's CORS settings already cover browser PUTs.
        await self.start()

    # --- paths ------------------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return os.path.join(self._root, *key_segments(key))

    def _check_inside(self, directory: str) -> None:
        real = os.path.realpath(directory)
        if real != self._root_real and not real.startswith(self._root_real + os.sep):
            raise InvalidObjectKey("the key leads outside the objects directory")

    def _prepare_parent(self, key: str) -> str:
        """The file path of ``key``, creating its directories; refuses any symlink on the way."""
        segments = key_segments(key)
        current = self._root
        for segment in segments[:-1]:
            current = os.path.join(current, segment)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(current).st_mode):  # a symlink (or a file) is in the way
                    raise InvalidObjectKey(f"{segment!r} in {key!r} is not a plain directory") from None
        self._check_inside(current)
        return os.path.join(current, segments[-1])

    def _open_sync(self, key: str) -> tuple[int, ObjectInfo] | None:
        path = self._path(key)
        self._check_inside(os.path.dirname(path))
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink planted where an object should be
                return None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        return fd, self._info(key, path, st)

    def _info(self, key: str, path: str, st: os.stat_result) -> ObjectInfo:
        directory, name = os.path.split(path)
        try:
            with open(os.path.join(directory, f".{name}.meta"), "rb") as sidecar:
                meta = msgspec.json.decode(sidecar.read(), type=_Meta)
        except (FileNotFoundError, msgspec.DecodeError):
            meta = _Meta(content_type="application/octet-stream", etag=f'"{st.st_mtime_ns:x}-{st.st_size:x}"')
        return ObjectInfo(
            key=key,
            size=st.st_size,
            content_type=meta.content_type,
            etag=meta.etag,
            last_modified=dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
        )

    # --- presigning -------------------------------------------------------------------------------
    def _signature(self, grant: _Signed) -> str:
        if self._signing_key is None:
            raise RuntimeError("the local object store was not started")
        return _b64(hmac.digest(self._signing_key, msgspec.json.encode(grant), "sha256"))

    def _url(self, key: str, grant: _Signed, params: list[tuple[str, str]]) -> str:
        params = [*params, ("signature", self._signature(grant))]
        query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params)
        return f"{self._base_url}{STORAGE_ROUTE}/{quote(key, safe='/~')}?{query}"

    def presign_put(
        self, key: str, *, content_type: str, content_length: int | None, expires_in: int
    ) -> PresignedUpload:
        key_segments(key)
        expires_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=expires_in)
        grant = _Signed(
            method="PUT",
            key=key,
            expires=int(expires_at.timestamp()),
            content_type=content_type,
            content_length=content_length,
            overrides=[],
        )
        params = [("method", "PUT"), ("expires", str(grant.expires)), ("content-type", content_type)]
        headers = {"Content-Type": content_type}
        if content_length is not None:
            params.append(("content-length", str(content_length)))
            headers["Content-Length"] = str(content_length)
        return PresignedUpload(
            url=self._url(key, grant, params), method="PUT", headers=headers, expires_at=expires_at
        )

    def presign_get(
        self,
        key: str,
        *,
        expires_in: int,
        signed_at: dt.datetime | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> str:
        key_segments(key)
        overrides = sorted((name.lower(), value) for name, value in (response_headers or {}).items())
        for name, _ in overrides:
            if name not in RESPONSE_OVERRIDES:
                raise ValueError(f"a signed GET cannot override the response header {name!r}")
        signed_at = signed_at or dt.datetime.now(dt.UTC)
        grant = _Signed(
            method="GET",
            key=key,
            expires=int(signed_at.timestamp()) + expires_in,
            content_type="",
            content_length=None,
            overrides=overrides,
        )
        params = [
            ("method", "GET"),
            ("expires", str(grant.expires)),
            *((f"response-{name}", value) for name, value in overrides),
        ]
        return self._url(key, grant, params)

    def _verify(self, request: Request[Any, Any, Any], key: str) -> _Signed:
        """The grant of a signed URL, or a _Refusal with S3's status and code."""
        query = request.query_params
        try:
            content_length = query.get("content-length")
            grant = _Signed(
                method=str(query.get("method", "")),
                key=key,
                expires=int(query.get("expires", "")),
                content_type=str(query.get("content-type", "")),
                content_length=int(content_length) if content_length is not None else None,
                overrides=sorted(
                    (name.removeprefix("response-"), str(value))
                    for name, value in query.items()
                    if name.startswith("response-")
                ),
            )
            signature = str(query["signature"])
        except (KeyError, ValueError):
            raise _Refusal(403, "AccessDenied", "Query-string authentication requires a signature") from None
        if not hmac.compare_digest(signature, self._signature(grant)) or grant.method != request.method:
            raise _Refusal(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
        if time.time() > grant.expires:
            raise _Refusal(403, "AccessDenied", "Request has expired")
        return grant

    # --- the storage route ------------------------------------------------------------------------
    def route_handlers(self) -> list[HTTPRouteHandler]:
        store = self

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
                grant = store._verify(request, key)
                if request.method == HttpMethod.PUT:
                    etag = await store._receive(request, key, grant)
                    await store._announce(key)
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
            except _Refusal as refusal:
                return _s3_error(refusal.status, refusal.code, refusal.message)
            except ObjectNotFound:
                return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            except RangeNotSatisfiable as exc:
                response = _s3_error(416, "InvalidRange", "The requested range is not satisfiable")
                response.headers["Content-Range"] = f"bytes */{exc.size}"
                return response

        return [local_storage]

    async def _announce(self, key: str) -> None:
        if not self._upload_listeners:
            return
        info = await self.head(key)
        if info is None:
            return
        for listener in self._upload_listeners:
            try:
                await listener(info)
            except Exception as exc:
                # The upload stands: the send's media job checks it anyway, only later.
                _log.warning("upload_announcement_failed", key=key, error=repr(exc))

    async def _receive(self, request: Request[Any, Any, Any], key: str, grant: _Signed) -> str:
        """Stream the body to disk under the grant's limits; the new object's ETag."""
        if request.headers.get("content-type", "") != grant.content_type:
            raise _Refusal(403, "SignatureDoesNotMatch", "Content-Type is not the signed one")
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise _Refusal(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        length = int(declared)
        if grant.content_length is not None and length != grant.content_length:
            raise _Refusal(403, "SignatureDoesNotMatch", "Content-Length is not the signed one")
        if length > self._max_bytes:
            raise _Refusal(413, "EntityTooLarge", f"Your proposed upload exceeds {self._max_bytes} bytes")
        upload = await self._run(_Upload, self, key)
        try:
            buffer = bytearray()
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) >= _WRITE_BUFFER:
                    await self._run(upload.write, bytes(buffer))
                    buffer.clear()
                if upload.size + len(buffer) > length:
                    raise _Refusal(400, "IncompleteBody", "More bytes than Content-Length")
            await self._run(upload.write, bytes(buffer))
            if upload.size != length:
                raise _Refusal(400, "IncompleteBody", "Fewer bytes than Content-Length")
            await self._run(upload.commit, grant.content_type)
        except InternalServerException:  # the client went away mid-body
            await self._run(upload.abort)
            raise _Refusal(400, "IncompleteBody", "The upload was interrupted") from None
        except BaseException:
            await anyio.to_thread.run_sync(upload.abort, limiter=self._limiter, abandon_on_cancel=False)
            raise
        return f'"{upload.md5.hexdigest()}"'

    # --- the port ---------------------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo | None:
        opened = await self._run(self._open_sync, key)
        if opened is None:
            return None
        fd, info = opened
        await self._run(os.close, fd)
        return info

    def _read_prefix_sync(self, key: str, length: int) -> tuple[ObjectInfo, bytes] | None:
        opened = self._open_sync(key)
        if opened is None:
            return None
        fd, info = opened
        try:
            return info, os.read(fd, length)
        finally:
            os.close(fd)

    async def read_prefix(self, key: str, length: int) -> tuple[ObjectInfo, bytes] | None:
        if length < 1:
            raise ValueError("length must be at least 1")
        return await self._run(self._read_prefix_sync, key, length)

    def _read_sync(self, key: str, if_match: str | None) -> tuple[ObjectInfo, bytes]:
        opened = self._open_sync(key)
        if opened is None:
            raise ObjectNotFound(key)
        fd, info = opened
        try:
            chunks = []
            while chunk := os.read(fd, _READ_CHUNK):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        # The ETag of the bytes read, not the sidecar's: a file replaced between the sidecar read and
        # the open cannot pass for the version the read is pinned to.
        etag = f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - an ETag, as S3 computes it
        if if_match is not None and etag != if_match:
            raise ObjectChanged(key, if_match)
        return msgspec.structs.replace(info, size=len(data), etag=etag), data

    async def read(self, key: str, *, if_match: str | None = None) -> tuple[ObjectInfo, bytes]:
        return await self._run(self._read_sync, key, if_match)

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectRead:
        if byte_range is not None and (
            byte_range.start < 0 or (byte_range.end is not None and byte_range.end < byte_range.start)
        ):
            raise ValueError(f"invalid byte range {byte_range!r}")
        opened = await self._run(self._open_sync, key)
        if opened is None:
            raise ObjectNotFound(key)
        fd, info = opened
        start, end = 0, info.size - 1
        if byte_range is not None:
            if byte_range.start >= info.size:
                await self._run(os.close, fd)
                raise RangeNotSatisfiable(info.size)
            start = byte_range.start
            end = info.size - 1 if byte_range.end is None else min(byte_range.end, info.size - 1)

        async def body() -> AsyncIterator[bytes]:
            position, remaining = start, end - start + 1
            try:
                while remaining > 0:
                    chunk = await self._run(os.pread, fd, min(_READ_CHUNK, remaining), position)
                    if not chunk:
                        return
                    position += len(chunk)
                    remaining -= len(chunk)
                    yield chunk
            finally:
                await anyio.to_thread.run_sync(os.close, fd, limiter=self._limiter, abandon_on_cancel=False)

        return ObjectRead(info=info, start=start, end=end, body=body())

    def _put_sync(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        upload = _Upload(self, key)
        try:
            upload.write(data)
            st = upload.commit(content_type)
        except BaseException:
            upload.abort()
            raise
        return self._info(key, upload.path, st)

    async def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        return await self._run(self._put_sync, key, data, content_type)

    def _delete_sync(self, key: str) -> None:
        path = self._path(key)
        self._check_inside(os.path.dirname(path))
        directory, name = os.path.split(path)
        for victim in (path, os.path.join(directory, f".{name}.meta")):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(victim)

    async def delete(self, key: str) -> None:
        await self._run(self._delete_sync, key)

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` in S3's order (by key, as UTF-8 bytes), one directory in memory at a time.

        Sorting siblings by name, with a ``/`` appended to directories, and walking depth first yields
        exactly the lexicographic order of the full keys.
        """

        def visit(directory: str, key_prefix: str) -> Iterator[ObjectInfo]:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            named = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                if not is_dir and not entry.is_file(follow_symlinks=False):
                    continue  # symlinks and special files are never objects
                named.append((entry.name + ("/" if is_dir else ""), entry))
            named.sort(key=lambda pair: pair[0])
            for name, entry in named:
                key = key_prefix + name
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if name.endswith("/"):
                    yield from visit(entry.path, key)
                elif key.startswith(prefix):
                    try:
                        yield self._info(key, entry.path, entry.stat(follow_symlinks=False))
                    except FileNotFoundError:
                        continue  # deleted while we walked

        yield from visit(self._root, "")

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        if page_size < 1:
            raise ValueError("page_size must be positive")
        walker = self._walk(prefix)
        while True:
            page = await self._run(lambda: [*islice(walker, page_size)])
            for info in page:
                # Same as S3's listing, which cannot tell the content type.
                yield msgspec.structs.replace(info, content_type="")
            if len(page) < page_size:
                return


def create(backends: Backends) -> LocalObjectStore:
    return LocalObjectStore(backends.settings)
