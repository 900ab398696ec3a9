"""Forwarding a message into another conversation: a new message whose images are server-side copies.

An image's bytes live under its conversation's keys (``{cid}/media/{messageId}/{variant}.{ext}``), and an
object backs at most one message, so a forwarded image cannot point at the source's objects: the ready
variants are copied (S3 CopyObject, a local file copy; never re-encoded, never re-uploaded) to the new
message's keys in the target conversation. The new message references a fresh ``object_key`` of the
caller's (``file_url`` names the target conversation only) and is born ``ready`` with the source's
dimensions, variants and BlurHash, so no media job runs for it. Deleting either message later leaves the
other's objects alone.

The copies are made before the message is stored: a stored ``ready`` message always has its objects. A
crash between the two leaves copies no message names, under the new message's own prefix; a retry with
the same ``clientMessageId`` writes the same keys again.

An album is forwarded whole: every image must be ready, and each is copied (in parallel) to the same
index of the new album, with a fresh ``object_key`` each.
"""

from __future__ import annotations

import asyncio

import msgspec

from chat_core import keys
from chat_core.errors import ProblemError
from chat_core.messagestore import ImageMetadata, ImageVariants, Message, albums
from chat_core.objectstore import ObjectNotFound, ObjectStore

__all__ = [
    "CopiedImage",
    "copy_image",
    "forwardable_image",
    "forwardable_images",
    "message_deleted",
    "source_is_deleted",
]


class CopiedImage(msgspec.Struct, frozen=True, kw_only=True):
    stored_key: str  # the image reference of the new message (no raw upload is behind it)
    metadata: ImageMetadata
    copied_bytes: int


def message_deleted() -> ProblemError:
    return ProblemError(404, "message_deleted", "that message was deleted")


def source_is_deleted(message: Message) -> bool:
    """Whether ``message`` was unsent (a tombstone): nothing of it may be forwarded.

    The one place forwarding asks; it reads the message's ``deleted`` flag when the store has one.
    """
    return bool(getattr(message, "deleted", False))


def forwardable_images(message: Message) -> tuple[ImageMetadata, ...]:
    """Every image of ``message`` (one, or an album's) when all can be forwarded now; otherwise the
    problem a client gets (an album forwards whole or not at all)."""
    if message.metadata is None:
        raise ProblemError(400, "invalid_request", "this message has no image")
    return tuple(forwardable_image(image) for image in albums.images_of(message.metadata))


def forwardable_image(metadata: ImageMetadata) -> ImageMetadata:
    """``metadata`` when its image can be forwarded now; otherwise the problem a client gets."""
    if metadata.status == "processing":
        raise ProblemError(
            409, "image_not_ready", "the image is still being processed; forward it once it is ready"
        )
    if metadata.status != "ready" or metadata.variants is None:
        # Failed, or stored before the media pipeline: there are no sanitized variants to copy.
        raise ProblemError(
            422,
            "image_unavailable",
            f"the image cannot be forwarded ({metadata.error or 'it has no processed variants'})",
        )
    return metadata


async def copy_image(
    object_store: ObjectStore,
    *,
    base_url: str,
    source_conversation: str,
    source_message_id: str,
    source: ImageMetadata,
    target_conversation: str,
    target_message_id: str,
    forwarder_id: str,
    index: int | None = None,
) -> CopiedImage:
    """Copy the ready variants of ``source`` to the new message's keys; raises ``message_deleted`` when
    the source's objects are gone (the source was deleted meanwhile)."""
    variants = source.variants
    assert variants is not None  # forwardable_image checked it
    content_types = {
        "original": source.content_type,
        "thumbnail": variants.thumbnail.content_type,
        "preview": variants.preview.content_type,
    }
    copies = [
        object_store.copy(
            keys.derivative_key(source_conversation, source_message_id, variant, content_type, index),
            keys.derivative_key(target_conversation, target_message_id, variant, content_type, index),
        )
        for variant, content_type in content_types.items()
    ]
    try:
        copied = await asyncio.gather(*copies)
    except ObjectNotFound:
        raise message_deleted() from None
    object_key = keys.new_object_key(forwarder_id, source.content_type)
    file_url = f"{base_url}/images/{target_conversation}/{object_key}"
    metadata = msgspec.structs.replace(
        source,  # dimensions, sizes, types and BlurHash of what was copied (and any field added later)
        object_key=object_key,
        url=file_url,
        variants=ImageVariants(
            thumbnail=msgspec.structs.replace(variants.thumbnail, url=f"{file_url}?variant=thumbnail"),
            preview=msgspec.structs.replace(variants.preview, url=f"{file_url}?variant=preview"),
        ),
    )
    return CopiedImage(
        stored_key=keys.stored_key(target_conversation, object_key),
        metadata=metadata,
        copied_bytes=sum(info.size for info in copied),
    )
