"""Local-disk adapter of the ObjectStore port: the embedded default (``OBJECT_STORE=local``).

Objects are plain files under ``DATA_DIR/objects``, one per key; the content type and the ETag (MD5 of the
bytes, as S3 gives for single-part uploads) sit in a hidden sidecar ``.{name}.meta`` beside each file.
Writes go to a temporary file and are renamed into place, so a reader sees the old object or the new one,
never half of one. All file I/O runs on a bounded thread pool, never on the event loop.

Nothing can escape the directory: keys are checked segment by segment (no empty, ``.``-leading — which
covers ``..`` and our own hidden files — or control-character segments, no backslashes, no absolute keys),
files are opened with ``O_NOFOLLOW``, and no directory on the way may be a symlink.

Split by job: this module is the file store (the port); ``local_signing`` signs and verifies the
presigned links (and owns the key file); ``local_route`` is the ``/_storage/{key}`` route they point to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import stat
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import msgspec
import structlog

from chat_core.objectstore import (
    ByteRange,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectRead,
    ObjectStore,
    PresignedUpload,
    RangeNotSatisfiable,
)
from chat_core.objectstore.local_signing import (
    CREATE_FLAGS,
    MIN_SIGNING_KEY_BYTES,
    SIGNING_KEY_FILE,
    STORAGE_ROUTE,
    InvalidObjectKey,
    SigningKeyError,
    UrlSigner,
    key_segments,
    load_signing_key,
)
from chat_core.settings import Settings

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler


__all__ = [
    "MIN_SIGNING_KEY_BYTES",
    "SIGNING_KEY_FILE",
    "STORAGE_ROUTE",
    "InvalidObjectKey",
    "LocalObjectStore",
    "SigningKeyError",
    "Upload",
    "key_segments",
]

T = TypeVar("T")
_log = structlog.get_logger("chat_core.objectstore.local")
_READ_CHUNK = 256 * 1024
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = CREATE_FLAGS


class _Meta(msgspec.Struct, frozen=True):
    content_type: str
    etag: str


class Upload:
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
        meta = msgspec.json.encode(_Meta(content_type=content_type, etag=self.etag()))
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

    def etag(self) -> str:
        """The bytes written so far's ETag, as S3 computes it for a single-part upload."""
        return f'"{self.md5.hexdigest()}"'

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


class _FileBody:
    """The bytes of an open file as an async iterator that closes its descriptor on every path.

    An async generator's ``finally`` only runs once it has started: a body nobody reads (the client left
    before the response began, an error between ``open`` and streaming) would keep its descriptor
    forever. Here the descriptor is closed at the end, on an error, on ``aclose()``, and, failing all
    of those, when the body is garbage-collected (``weakref.finalize``).
    """

    def __init__(self, fd: int, position: int, remaining: int, limiter: anyio.CapacityLimiter) -> None:
        self._fd = fd
        self._position = position
        self._remaining = remaining
        self._limiter = limiter
        self._closer = weakref.finalize(self, _close_quietly, fd)

    def __aiter__(self) -> _FileBody:
        return self

    async def __anext__(self) -> bytes:
        if self._remaining <= 0 or not self._closer.alive:
            await self.aclose()
            raise StopAsyncIteration
        try:
            chunk = await anyio.to_thread.run_sync(
                os.pread, self._fd, min(_READ_CHUNK, self._remaining), self._position, limiter=self._limiter
            )
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._position += len(chunk)
        self._remaining -= len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._closer()  # closes once; later calls do nothing


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class LocalObjectStore(ObjectStore):
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
        self._signer: UrlSigner | None = None
        self._upload_listeners: list[Callable[[ObjectInfo], Awaitable[None]]] = []

    def announce_uploads(self, listener: Callable[[ObjectInfo], Awaitable[None]]) -> None:
        """Call ``listener`` after each upload through a signed URL lands (S3's object-created event)."""
        self._upload_listeners.append(listener)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the store's bounded thread pool."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)

    # --- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.run(self._start_sync)

    def _start_sync(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        self._root_real = os.path.realpath(self._root)
        self._signer = UrlSigner(load_signing_key(self._key_file), self._base_url)

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        if not await self.run(os.access, self._root, os.W_OK):
            raise OSError(f"{self._root} is not writable")

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

    # --- presigning (local_signing) and the storage route (local_route) ------------------------------
    @property
    def signer(self) -> UrlSigner:
        if self._signer is None:
            raise RuntimeError("the local object store was not started")
        return self._signer

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        return self._limiter

    def open_upload(self, key: str) -> Upload:
        """A new file for ``key`` (blocking: call it through ``run``)."""
        return Upload(self, key)

    def presign_put(
        self, key: str, *, content_type: str, content_length: int | None, expires_in: int
    ) -> PresignedUpload:
        key_segments(key)
        return self.signer.presign_put(
            key, content_type=content_type, content_length=content_length, expires_in=expires_in
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
        return self.signer.presign_get(
            key, expires_in=expires_in, signed_at=signed_at, response_headers=response_headers
        )

    def route_handlers(self) -> list[HTTPRouteHandler]:
        from chat_core.objectstore.local_route import storage_route

        return [storage_route(self)]

    async def announce(self, key: str) -> None:
        """Tell the upload listeners an object arrived through a signed URL (the /_storage route's PUT)."""
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

    # --- the port ---------------------------------------------------------------------------------
    async def head(self, key: str) -> ObjectInfo | None:
        opened = await self.run(self._open_sync, key)
        if opened is None:
            return None
        fd, info = opened
        await self.run(os.close, fd)
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
        return await self.run(self._read_prefix_sync, key, length)

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
        return await self.run(self._read_sync, key, if_match)

    async def open(self, key: str, byte_range: ByteRange | None = None) -> ObjectRead:
        if byte_range is not None and (
            byte_range.start < 0 or (byte_range.end is not None and byte_range.end < byte_range.start)
        ):
            raise ValueError(f"invalid byte range {byte_range!r}")
        opened = await self.run(self._open_sync, key)
        if opened is None:
            raise ObjectNotFound(key)
        fd, info = opened
        start, end = 0, info.size - 1
        if byte_range is not None:
            if byte_range.start >= info.size:
                await self.run(os.close, fd)
                raise RangeNotSatisfiable(info.size)
            start = byte_range.start
            end = info.size - 1 if byte_range.end is None else min(byte_range.end, info.size - 1)

        body = _FileBody(fd, start, end - start + 1, self._limiter)
        return ObjectRead(info=info, start=start, end=end, body=body)

    def _put_sync(self, key: str, data: bytes, content_type: str) -> ObjectInfo:
        upload = Upload(self, key)
        try:
            upload.write(data)
            st = upload.commit(content_type)
        except BaseException:
            upload.abort()
            raise
        return self._info(key, upload.path, st)

    async def put(self, key: str, data: bytes, *, content_type: str) -> ObjectInfo:
        return await self.run(self._put_sync, key, data, content_type)

    def _copy_sync(self, source: str, destination: str) -> ObjectInfo:
        opened = self._open_sync(source)
        if opened is None:
            raise ObjectNotFound(source)
        fd, info = opened
        upload = Upload(self, destination)
        try:
            while chunk := os.read(fd, _READ_CHUNK):
                upload.write(chunk)
            st = upload.commit(info.content_type)
        except BaseException:
            upload.abort()
            raise
        finally:
            os.close(fd)
        return self._info(destination, upload.path, st)

    async def copy(self, source: str, destination: str) -> ObjectInfo:
        return await self.run(self._copy_sync, source, destination)

    def _delete_sync(self, key: str) -> None:
        path = self._path(key)
        self._check_inside(os.path.dirname(path))
        directory, name = os.path.split(path)
        for victim in (path, os.path.join(directory, f".{name}.meta")):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(victim)

    async def delete(self, key: str) -> None:
        await self.run(self._delete_sync, key)

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
            page = await self.run(lambda: [*islice(walker, page_size)])
            for info in page:
                # Same as S3's listing, which cannot tell the content type.
                yield msgspec.structs.replace(info, content_type="")
            if len(page) < page_size:
                return
