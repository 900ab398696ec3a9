"""Verifying the object an image message references, before anything is stored.

Nothing the client says about the image is trusted beyond which object it means and which type it
declares. The checks, cheapest first, each a problem response with a stable code:

1. the declared type is an accepted image type                      415 unsupported_image_type
2. the key has the upload layout                                     400 invalid_object_key
3. it lies under this conversation                                   403 object_not_in_conversation
4. it was uploaded by the sender                                     403 object_not_yours
5. its extension is the declared type's                              422 content_type_mismatch
6. the object exists (ONE ranged read: type, size, mtime, 256 KiB)   404 image_not_found
   (or, when the media processor deleted it on arrival, the 413/422 of 7, 10 or 11 with its reason,
   from the note it left: read only on this not-found path, so a found object costs nothing more)
7. its size is within MAX_IMAGE_BYTES                                413 image_too_large
8. its stored type equals the declared one                           422 content_type_mismatch
9. it is not older than the send window (see below)                 410 upload_expired
10. its first bytes really are that type, with a sane header        422 not_an_image
11. the header declares at most MAX_IMAGE_PIXELS                     422 too_many_pixels

The send window: orphan cleanup deletes unreferenced objects older than ``ORPHAN_GRACE_SECONDS``. A send
could otherwise check an object, cleanup find it unreferenced and delete it, and the send commit a
message whose image is gone. So an upload must be sent within the grace period minus a margin
(half of it, at most an hour: 23 h by default); ``ORPHAN_GRACE_SECONDS=0`` turns the window off.

Width and height come from the image header (``chat_core.image_headers``, as displayed: EXIF orientation and
HEIF rotation applied); ``size_bytes`` from the store; the ``url`` is the proxy URL. The message starts
``processing``: the media processor finishes it. The store being unreachable is a 503, never a verdict
on the image.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import urlsplit

import msgspec
import structlog

from chat_core import image_headers, keys
from chat_core.chatstore import ImageMetadata
from chat_core.errors import ProblemError
from chat_core.media_jobs import UploadRefusal
from chat_core.objectstore import ObjectNotFound, ObjectStore
from chat_core.settings import Settings
from message_service.schemas import ImageRequest

__all__ = ["ImageVerifier", "VerifiedImage"]

_log = structlog.get_logger("message_service.verification")
# The conversation a proxy URL ({base}/images/{conversation_id}/images/{uploader}/{file}) points into.
_PROXY_PATH = re.compile(r"/images/(?P<conversation_id>[^/]+)/images/[^/]+/[^/]+$")


class VerifiedImage(msgspec.Struct, frozen=True, kw_only=True):
    stored_key: str  # uploads/{conversation_id}/{object_key}: what the message references in the store
    metadata: ImageMetadata  # what the server measured, as stored in the message
    last_modified: dt.datetime  # when the upload finished (upload-to-send latency)
    etag: str  # of the object verified: the media job's fetch is pinned to it


class ImageVerifier:
    def __init__(self, settings: Settings, objects: ObjectStore) -> None:
        self._objects = objects
        self._base_url = settings.service.base_url()
        self._allowed = frozenset(settings.images.allowed_types) & keys.EXTENSIONS.keys()
        self._max_bytes = settings.images.max_bytes
        self._max_pixels = settings.media.max_image_pixels
        grace = settings.images.orphan_grace_seconds
        self._send_window = dt.timedelta(seconds=grace - min(grace / 2, 3600)) if grace else None

    async def verify(self, sender_id: str, conversation_id: str, requested: ImageRequest) -> VerifiedImage:
        content_type = keys.accepted_content_type(requested.content_type, self._allowed)
        object_key, parsed = self._locate(conversation_id, requested)
        if parsed.uploader_id != sender_id:
            raise ProblemError(403, "object_not_yours", "the image was uploaded by someone else")
        if keys.EXTENSIONS[content_type] != parsed.extension:
            raise ProblemError(
                422,
                "content_type_mismatch",
                f"the object was uploaded as .{parsed.extension}, not as {content_type}",
            )
        stored_key = keys.stored_key(conversation_id, object_key)
        try:
            found = await self._objects.read_prefix(stored_key, image_headers.HEADER_BYTES)
        except Exception as exc:
            _log.warning("image_read_failed", key=stored_key, error=repr(exc))
            raise ProblemError(
                503, "storage_unavailable", "the image could not be checked; retry shortly"
            ) from None
        if found is None:
            raise await self._not_found(stored_key)
        info, prefix = found
        if info.size > self._max_bytes:
            raise ProblemError(
                413, "image_too_large", f"the image is {info.size} bytes; the limit is {self._max_bytes}"
            )
        stored_type = info.content_type.partition(";")[0].strip().lower()
        if stored_type != content_type:
            raise ProblemError(
                422,
                "content_type_mismatch",
                f"the object was stored as {stored_type or 'no type'}, not as {content_type}",
            )
        if self._send_window is not None and dt.datetime.now(dt.UTC) - info.last_modified > self._send_window:
            raise ProblemError(
                410,
                "upload_expired",
                f"uploaded more than {self._send_window} ago, so it may be cleaned up: upload it again",
            )
        try:
            header = image_headers.inspect_image(prefix, total_size=info.size)
        except image_headers.NotAnImage as exc:
            raise ProblemError(422, "not_an_image", str(exc)) from None
        try:
            image_headers.refuse_too_many_pixels(header, self._max_pixels)
        except image_headers.TooManyPixels as exc:
            raise ProblemError(422, "too_many_pixels", str(exc)) from None
        if header.content_type != content_type:
            raise ProblemError(
                422,
                "not_an_image",
                f"the bytes are a {header.content_type.removeprefix('image/').upper()} image, "
                f"not {content_type}",
            )
        metadata = ImageMetadata(
            object_key=object_key,
            url=f"{self._base_url}/images/{conversation_id}/{object_key}",
            content_type=content_type,
            size_bytes=info.size,
            width=header.width,
            height=header.height,
            status="processing",
            alt_text=requested.alt_text,
        )
        return VerifiedImage(
            stored_key=stored_key, metadata=metadata, last_modified=info.last_modified, etag=info.etag
        )

    async def _not_found(self, stored_key: str) -> ProblemError:
        """The reason the media processor deleted the upload on arrival, else a plain 404."""
        try:
            _info, note = await self._objects.read(keys.refusal_key(stored_key))
            return msgspec.json.decode(note, type=UploadRefusal).problem()
        except ObjectNotFound:
            pass
        except Exception as exc:  # an unreadable note is no verdict: the object is gone either way
            _log.warning("refusal_note_unreadable", key=stored_key, error=repr(exc))
        return ProblemError(
            404, "image_not_found", "no uploaded image with that object_key in this conversation"
        )

    @staticmethod
    def _locate(conversation_id: str, requested: ImageRequest) -> tuple[str, keys.ParsedKey]:
        """(object_key, parsed) of the object meant, refusing one that lies in another conversation.

        ``object_key`` is normally the upload response's ``images/...`` (under this conversation by
        construction). A client may also pass ``{conversation_id}/images/...``, and its ``url`` (the
        upload response's ``file_url``) names the conversation too: either naming another
        conversation is refused without looking at that conversation's objects.
        """
        raw = requested.object_key
        try:
            if raw.startswith("images/"):
                owner, object_key = conversation_id, raw
                parsed = keys.parse_object_key(raw)
            else:
                owner, object_key, parsed = keys.parse_conversation_key(raw)
        except keys.InvalidKey as exc:
            raise ProblemError(400, "invalid_object_key", str(exc)) from None
        if requested.url:
            match = _PROXY_PATH.search(urlsplit(requested.url).path)
            if match and match["conversation_id"] != conversation_id:
                owner = match["conversation_id"]
        if owner != conversation_id:
            raise ProblemError(
                403, "object_not_in_conversation", "the image was uploaded to another conversation"
            )
        return object_key, parsed
