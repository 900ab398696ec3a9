"""Albums: an image message with 2..``MAX_IMAGES_PER_MESSAGE`` images, and the one place that knows how
one is stored.

An album's ``metadata.images`` lists every image in the order sent, each a full ``ImageMetadata`` (its
own ``status``, ``variants``, ``blurhash``, proxy ``url``, ``alt_text``). The album's own top-level fields
repeat its first image's: a client (or a push, an export, the conversation's ``lastMessage``) that does
not know albums shows the album's first photo instead of nothing. ``images`` is the truth; every reader
that knows albums goes through ``images_of``.

An image of an album is named by its ``index`` (0-based, the order sent): in ``message.updated``, in the
gallery, in an edit of its alt text, in a failing image's problem details. Its derivatives live under
``{cid}/media/{messageId}/{index}/`` (``keys.derivative_key``), so the message's one media prefix still
holds every byte of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from chat_core import keys

if TYPE_CHECKING:
    from chat_core.messagestore import ImageMetadata

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "album_of",
    "image_at",
    "image_for_stored_key",
    "images_of",
    "index_of",
    "is_album",
    "with_alt_text",
    "with_image",
]

DEFAULT_MAX_IMAGES = 10  # MAX_IMAGES_PER_MESSAGE's default


def is_album(metadata: ImageMetadata | None) -> bool:
    return metadata is not None and isinstance(metadata.images, tuple)


def images_of(metadata: ImageMetadata | None) -> tuple[ImageMetadata, ...]:
    """Every image of an image message in order: one for a single image, none for a text message."""
    if metadata is None:
        return ()
    if isinstance(metadata.images, tuple):
        return metadata.images
    return (metadata,)


def album_of(images: Sequence[ImageMetadata]) -> ImageMetadata:
    """The stored metadata of ``images``: the image itself for one, an album (first image on top) for more."""
    if len(images) == 1:
        return msgspec.structs.replace(images[0], images=msgspec.UNSET)
    inner = tuple(msgspec.structs.replace(image, images=msgspec.UNSET) for image in images)
    return msgspec.structs.replace(inner[0], images=inner)


def index_of(metadata: ImageMetadata, object_key: str) -> int | None:
    """The index of the album image with ``object_key``; None when not an album or no such image."""
    if not isinstance(metadata.images, tuple):
        return None
    for index, image in enumerate(metadata.images):
        if image.object_key == object_key:
            return index
    return None


def image_at(metadata: ImageMetadata | None, index: int | None) -> ImageMetadata | None:
    """The image ``index`` names (None: the single image, or an album's image that ``index_of`` found)."""
    if metadata is None:
        return None
    if not isinstance(metadata.images, tuple):
        return metadata if index is None else None
    if index is None or not 0 <= index < len(metadata.images):
        return None
    return metadata.images[index]


def with_image(metadata: ImageMetadata, index: int | None, image: ImageMetadata) -> ImageMetadata:
    """``metadata`` with image ``index`` replaced (the whole metadata for a single image)."""
    if not isinstance(metadata.images, tuple) or index is None:
        return image
    images = list(metadata.images)
    images[index] = image
    return album_of(images)


def with_alt_text(metadata: ImageMetadata, index: int | None, alt_text: str | None) -> ImageMetadata:
    """``metadata`` with the alt text of image ``index`` (an album's first image without one) set."""
    if not isinstance(metadata.images, tuple):
        return msgspec.structs.replace(metadata, alt_text=alt_text)
    position = index or 0
    image = metadata.images[position]
    return with_image(metadata, position, msgspec.structs.replace(image, alt_text=alt_text))


def image_for_stored_key(
    metadata: ImageMetadata | None, stored_key: str
) -> tuple[int | None, ImageMetadata | None]:
    """(index, image) of the image whose raw upload is ``stored_key`` (``uploads/{cid}/images/...``);
    index None for a single image (whatever the key: the store's reference found it), image None when an
    album has no such image."""
    if metadata is None:
        return None, None
    if not isinstance(metadata.images, tuple):
        return None, metadata
    try:
        _cid, object_key, _parsed = keys.parse_stored_key(stored_key)
    except keys.InvalidKey:
        return None, None
    index = index_of(metadata, object_key)
    return index, image_at(metadata, index)
