"""The one module that turns an uploaded image into what members are served.

``sanitize(data, content_type, limits)`` is pure: bytes in, a ``Sanitized`` (``original``, ``preview``,
``thumbnail`` and a BlurHash) or a ``Rejected`` with a stable reason code out. It never raises for bad
input. It runs in a worker process (``media_processor.pool``), which bounds its time and memory.

Implementation: libvips (``pyvips`` + the ``pyvips-binary`` wheel). ``bench/media.py`` measures it
against Pillow doing the same job on the same files: libvips does 1.2-1.5x the JPEGs and ~5x the PNGs
per core, Pillow ~1.3x the animated GIFs (its palette quantizer is cheaper), and libvips streams, so a
50 MP JPEG peaks at ~170 MB (~285 MB when EXIF-turned) against ~710 MB for Pillow. Memory decides: a
worker's bound must hold the worst image, not the average one. HEIC/HEIF is decoded by ``pillow-heif``
(libde265): the libvips wheel ships no HEVC decoder (patents), only AV1.

Order of work, so that no hostile header ever reaches a full decode:

1. the magic bytes must name the declared type (``content_type_mismatch`` / ``unsupported_type``);
2. width, height and frame count come from the header alone (``chat_core.image_headers`` in pure Python, then
   the decoder's lazy header read) and are checked against ``MAX_IMAGE_PIXELS``, ``MAX_IMAGE_FRAMES``
   and ``MAX_ANIMATION_PIXELS`` (settings: ``chat_core.settings.MediaSettings`` declares every limit once);
3. decode (truncated files fail: ``fail_on=truncated``), apply the EXIF orientation to the pixels,
   convert to sRGB through the embedded ICC profile (CMYK through a CMYK profile), 8 bits per sample;
4. encode with ``keep=none``: no EXIF (GPS included), XMP, IPTC, ICC, comments or PNG text chunks.
   Colours are kept by the sRGB conversion: every browser shows untagged pixels as sRGB.

Only the accepted formats' decoders can run (Zulip's ``thumbnail.py`` does the same): libvips picks a
loader by sniffing the bytes itself, in its own priority order, and this wheel carries more loaders than
we accept (TIFF, SVG, libultrahdr, HEIF/AVIF, its own ``.vips``, CSV, matrix; a system libvips may add
ImageMagick, PDF, OpenSlide). So every loader is blocked at import, then only the JPEG, PNG, GIF and WebP
ones are unblocked, and ``block_untrusted_set`` blocks whatever libvips itself marks untrusted. A file
that passes our magic-byte check but that libvips would hand to another decoder (an UltraHDR JPEG goes to
libultrahdr, for one) is decoded by the loader of its type or not at all; and the loader that opened the
header must be the one of the sniffed type (``unsupported_type`` otherwise), in case a later libvips adds
a loader under another name. HEIC/HEIF never reaches libvips' loaders (``pillow-heif`` decodes it).

Output formats: the original keeps its format (JPEG, PNG, GIF, WebP; animation kept) except HEIC/HEIF,
which becomes JPEG so that browsers can show it. Variants are JPEG for opaque stills and WebP for
images with alpha and for animations (animated, so a chat list moves as the original does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import blurhash
import pyvips

from chat_core import image_headers
from chat_core.settings import MediaSettings

__all__ = [
    "DEFAULT_LIMITS",
    "HEIF_TYPES",
    "SUPPORTED_TYPES",
    "VIPS_LOADERS",
    "ImageLimits",
    "Reason",
    "Rejected",
    "Sanitized",
    "Variant",
    "restrict_loaders",
    "sanitize",
]

# The limits and variant sizes are settings (MAX_IMAGE_PIXELS, MAX_IMAGE_FRAMES, MAX_ANIMATION_PIXELS,
# MEDIA_PREVIEW_EDGE, MEDIA_THUMBNAIL_EDGE), declared once in chat_core.settings.MediaSettings, whose
# defaults are ImageLimits' defaults too. What stays here are the encoder's own choices.
_SETTINGS = MediaSettings()
JPEG_QUALITY = 85
WEBP_QUALITY = 80
WEBP_EFFORT = 2
"""libwebp's method (0-6): 2 encodes animated variants about 1.5x faster than the default 4 for ~10%
more bytes, a good trade for derivatives made once per upload on shared cores."""
BLURHASH_SOURCE_EDGE = 32
"""BlurHash keeps 4x3 colour components: a 32 px copy of the thumbnail carries all of them (and keeps
the pure-Python encoder of the ``blurhash`` package at about a millisecond)."""

HEIF_TYPES = frozenset({"image/heic", "image/heif"})
SUPPORTED_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", *HEIF_TYPES})
VIPS_LOADERS = {
    "image/jpeg": ("VipsForeignLoadJpeg", "jpegload"),
    "image/png": ("VipsForeignLoadPng", "pngload"),
    "image/gif": ("VipsForeignLoadNsgif", "gifload"),
    "image/webp": ("VipsForeignLoadWebp", "webpload"),
}
"""The libvips loaders allowed to run (class, nickname), by the type they decode."""


def restrict_loaders() -> None:
    """Block every libvips loader but those of ``VIPS_LOADERS``, and whatever libvips deems untrusted."""
    pyvips.operation_block_set("VipsForeignLoad", True)
    for loader, _nickname in VIPS_LOADERS.values():
        pyvips.operation_block_set(loader, False)
    pyvips.block_untrusted_set(True)


restrict_loaders()  # at import: every process that can call sanitize() has imported this module


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one job may produce and decode. The pool adds its time and memory bounds.

    ``max_pixels``: one frame (width x height, as stored; a 50 MP RGB frame is 150 MB decoded);
    ``max_animation_pixels``: all frames together (an animation is decoded as one tall strip, so this
    bounds its memory); the edges are the variants' long edges, never enlarged.
    """

    max_pixels: int = _SETTINGS.max_image_pixels
    max_frames: int = _SETTINGS.max_image_frames
    max_animation_pixels: int = _SETTINGS.max_animation_pixels
    preview_edge: int = _SETTINGS.preview_edge
    thumbnail_edge: int = _SETTINGS.thumbnail_edge
    jpeg_quality: int = JPEG_QUALITY
    webp_quality: int = WEBP_QUALITY
    webp_effort: int = WEBP_EFFORT

    @classmethod
    def from_settings(cls, media: MediaSettings) -> ImageLimits:
        return cls(
            max_pixels=media.max_image_pixels,
            max_frames=media.max_image_frames,
            max_animation_pixels=media.max_animation_pixels,
            preview_edge=media.preview_edge,
            thumbnail_edge=media.thumbnail_edge,
        )


DEFAULT_LIMITS = ImageLimits()


class Reason(enum.StrEnum):
    """Why an image was refused: stable codes for ``metadata.error``, logs and the metrics' ``reason``."""

    UNSUPPORTED_TYPE = "unsupported_type"  # magic bytes of no accepted image type
    CONTENT_TYPE_MISMATCH = "content_type_mismatch"  # an accepted type, not the declared one
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_MANY_FRAMES = "too_many_frames"
    TRUNCATED = "truncated"  # the data ends before the image does
    DECODE_FAILED = "decode_failed"  # corrupt in any other way
    TIMEOUT = "timeout"  # the pool killed the job after its time budget
    MEMORY = "memory"  # the job hit its memory bound
    WORKER_CRASHED = "worker_crashed"  # the worker died for another reason (a decoder bug)


@dataclass(frozen=True, slots=True)
class Variant:
    data: bytes
    width: int
    height: int
    content_type: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Sanitized:
    original: Variant
    preview: Variant
    thumbnail: Variant
    blurhash: str
    frames: int


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def sanitize(data: bytes, content_type: str, limits: ImageLimits = DEFAULT_LIMITS) -> Sanitized | Rejected:
    """The sanitized original, preview, thumbnail and BlurHash of ``data``, or why not."""
    try:
        return _sanitize(data, content_type, limits)
    except _Refused as refused:
        return Rejected(refused.reason, str(refused))
    except MemoryError:
        return Rejected(Reason.MEMORY, "the image needs more memory than a job may use")
    except pyvips.Error as error:
        return Rejected(*_decode_failure(data, content_type, error.message + " " + error.detail))
    except Exception as error:  # a decoder's own exception types are many; all mean the same here
        return Rejected(*_decode_failure(data, content_type, str(error)))


def _sanitize(data: bytes, content_type: str, limits: ImageLimits) -> Sanitized:
    found = image_headers.sniff_type(data[: image_headers.HEADER_BYTES])
    if found is None or found not in SUPPORTED_TYPES:
        raise _Refused(Reason.UNSUPPORTED_TYPE, "the bytes are not a JPEG, PNG, GIF, WebP or HEIC/HEIF image")
    if found != content_type and not (found in HEIF_TYPES and content_type in HEIF_TYPES):
        raise _Refused(Reason.CONTENT_TYPE_MISMATCH, f"declared {content_type}, the bytes are {found}")
    try:
        header = image_headers.inspect_image(data[: image_headers.HEADER_BYTES], total_size=len(data))
    except image_headers.NotAnImage as error:
        raise _Refused(_truncated_or_corrupt(data, found, str(error)), str(error)) from None
    if header.width and header.height:
        _check_pixels(header.width * header.height, limits)
    _check_complete(data, found)
    if found in HEIF_TYPES:
        return _derive_from_memory(_decode_heif(data, limits), limits)
    return _derive_streaming(data, found, limits)


def _check_pixels(pixels: int, limits: ImageLimits) -> None:
    if pixels > limits.max_pixels:
        raise _Refused(Reason.TOO_MANY_PIXELS, f"{pixels} pixels, the limit is {limits.max_pixels}")


def _check_complete(data: bytes, content_type: str) -> None:
    """GIF and WebP decoders show what they got of a cut file; a cut file is refused here instead."""
    if content_type == "image/gif" and not data.rstrip(b"\x00").endswith(b";"):
        raise _Refused(Reason.TRUNCATED, "the GIF image ends before its trailer")
    if content_type == "image/webp" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        raise _Refused(Reason.TRUNCATED, "the WebP image ends before its RIFF chunk does")


def _derive_streaming(data: bytes, found: str, limits: ImageLimits) -> Sanitized:
    """JPEG, PNG, GIF, WebP: the original streamed through, the preview from a shrink-on-load decode.

    Memory stays near one full-size frame at worst (an orientation that turns the image needs random
    access) and near nothing for an upright one: the original is decoded and encoded a strip at a time,
    and the preview comes from ``thumbnail``, which decodes JPEGs at 1/2..1/8 scale straight away.
    """
    # Lazy: this reads the header only, so the limits are checked before any pixel is decoded.
    head = pyvips.Image.new_from_buffer(data, "", access="sequential", fail_on="truncated")
    loader = str(head.get("vips-loader"))
    if loader.removesuffix("_buffer") != VIPS_LOADERS[found][1]:
        raise _Refused(
            Reason.UNSUPPORTED_TYPE, f"the bytes start as {found} but libvips reads them as {loader}"
        )
    _check_pixels(head.width * head.height, limits)
    frames = head.get("n-pages") if head.get_typeof("n-pages") else 1
    loader_options = "fail_on=truncated"
    if frames > 1:
        if frames > limits.max_frames:
            raise _Refused(Reason.TOO_MANY_FRAMES, f"{frames} frames, the limit is {limits.max_frames}")
        total = head.width * head.height * frames
        if total > limits.max_animation_pixels:
            raise _Refused(
                Reason.TOO_MANY_PIXELS,
                f"{total} pixels in {frames} frames, the limit is {limits.max_animation_pixels}",
            )
        full = pyvips.Image.new_from_buffer(data, "", n=-1, access="sequential", fail_on="truncated")
        loader_options += ",n=-1"
    elif _orientation(head) == 1:
        full = head
    else:  # turning needs random access to the whole frame
        # Through a Source, libvips decodes a frame above its disc threshold (100 MB) to a temporary
        # file it maps a window at a time, rather than into memory: a turned 50 MP photo stays under
        # 300 MB. The temporary directory (TMPDIR) must be writable.
        source = pyvips.Source.new_from_memory(data)
        full = pyvips.Image.new_from_source(source, "", access="random", fail_on="truncated").autorot()
    full = _to_srgb(full)
    alpha = full.hasalpha()
    chunks, width, height = _write(full, found, frames, limits, large=True)
    del full, head  # the decoded frame goes before the encoded chunks are joined
    original = Variant(b"".join(chunks), width, height, found)
    del chunks
    preview_image = pyvips.Image.thumbnail_buffer(
        data, limits.preview_edge, height=limits.preview_edge, size="down", option_string=loader_options
    )
    preview_image = _to_srgb(preview_image).copy_memory()
    return _variants(original, preview_image, frames, alpha, limits)


def _orientation(image: pyvips.Image) -> int:
    if not image.get_typeof("orientation"):
        return 1
    value = int(image.get("orientation"))
    return value if 1 <= value <= 8 else 1


def _decode_heif(data: bytes, limits: ImageLimits) -> pyvips.Image:
    import pillow_heif

    heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True)  # header only until .data is read
    width, height = heif.size
    _check_pixels(width * height, limits)
    # pillow-heif applies the HEIF transforms (irot/imir), which are the orientation by the standard.
    bands = 4 if heif.has_alpha else 3
    image = pyvips.Image.new_from_memory(bytes(heif.data), width, height, bands, "uchar")
    image = image.copy(interpretation="srgb")
    profile = heif.info.get("icc_profile")
    if isinstance(profile, bytes) and profile:
        image = image.copy()
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    return _to_srgb(image).copy_memory()


def _to_srgb(image: pyvips.Image) -> pyvips.Image:
    """sRGB (or grey), 8 bits per sample, through the embedded profile if any; alpha kept."""
    interpretation = image.interpretation
    if image.get_typeof("icc-profile-data") or interpretation == "cmyk":
        fallback = "cmyk" if interpretation == "cmyk" else "srgb"
        image = image.icc_transform("srgb", embedded=True, input_profile=fallback, intent="perceptual")
    elif interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("srgb" if interpretation not in ("b-w", "grey16") else "b-w")
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _derive_from_memory(full: pyvips.Image, limits: ImageLimits) -> Sanitized:
    """HEIC/HEIF, already decoded (pillow-heif): an opaque original becomes a JPEG."""
    original = _encode(full, "image/jpeg", 1, limits, large=True)
    preview_image = _shrink(full, limits.preview_edge, 1)
    return _variants(original, preview_image, 1, full.hasalpha(), limits)


def _variants(
    original: Variant, preview_image: pyvips.Image, frames: int, alpha: bool, limits: ImageLimits
) -> Sanitized:
    variant_type = "image/webp" if (frames > 1 or alpha) else "image/jpeg"
    thumbnail_image = _shrink(preview_image, limits.thumbnail_edge, frames)
    return Sanitized(
        original=original,
        preview=_encode(preview_image, variant_type, frames, limits),
        thumbnail=_encode(thumbnail_image, variant_type, frames, limits),
        blurhash=_blurhash(thumbnail_image, frames),
        frames=frames,
    )


def _frame_size(image: pyvips.Image, frames: int) -> tuple[int, int]:
    return image.width, image.height // frames


def _shrink(image: pyvips.Image, edge: int, frames: int) -> pyvips.Image:
    width, height = _frame_size(image, frames)
    if max(width, height) <= edge:
        return image
    scale = edge / max(width, height)
    if frames == 1:
        return image.thumbnail_image(edge, height=edge, size="down").copy_memory()
    # A strip of frames shrinks frame by frame: each frame's height must stay a whole number.
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    strip = image.resize(new_width / width, vscale=(new_height * frames) / image.height)
    strip = strip.copy_memory()
    strip.set_type(pyvips.GValue.gint_type, "page-height", new_height)
    return strip


def _encode(
    image: pyvips.Image, content_type: str, frames: int, limits: ImageLimits, *, large: bool = False
) -> Variant:
    chunks, width, height = _write(image, content_type, frames, limits, large=large)
    return Variant(b"".join(chunks), width, height, content_type)


def _write(
    image: pyvips.Image, content_type: str, frames: int, limits: ImageLimits, *, large: bool = False
) -> tuple[list[bytes], int, int]:
    """Encode with no metadata. ``large``: a full-size image, encoded in one streaming pass (no
    progressive JPEG, no optimized Huffman tables: both make libjpeg hold every coefficient in memory)."""
    keep = pyvips.ForeignKeep.NONE  # no EXIF, XMP, IPTC, ICC, comments or PNG text: see the module doc
    if frames > 1:
        image = image.copy()
        image.set_type(pyvips.GValue.gint_type, "page-height", image.height // frames)
    if content_type == "image/jpeg":
        if image.hasalpha():  # HEIC with alpha becomes an opaque JPEG: flatten onto white
            image = image.flatten(background=[255, 255, 255])
        saver, options = (
            ".jpg",
            {"Q": limits.jpeg_quality, "optimize_coding": not large, "interlace": not large},
        )
    elif content_type == "image/png":
        saver, options = ".png", {"compression": 6}
    elif content_type == "image/gif":
        saver, options = ".gif", {}
    else:
        saver, options = ".webp", {"Q": limits.webp_quality, "effort": limits.webp_effort}
    # Written in chunks to a list rather than to one growing buffer, whose reallocations would hold
    # two copies of a large output at once.
    chunks: list[bytes] = []
    target = pyvips.TargetCustom()

    def write(chunk: bytes) -> int:
        chunks.append(bytes(chunk))
        return len(chunk)

    target.on_write(write)
    image.write_to_target(target, saver, keep=keep, **options)
    width, height = _frame_size(image, frames)
    return chunks, width, height


def _blurhash(thumbnail: pyvips.Image, frames: int) -> str:
    if frames > 1:
        thumbnail = thumbnail.crop(0, 0, thumbnail.width, thumbnail.height // frames)
    small = thumbnail.thumbnail_image(BLURHASH_SOURCE_EDGE, height=BLURHASH_SOURCE_EDGE, size="down")
    if small.hasalpha():
        small = small.flatten(background=[255, 255, 255])
    if small.bands == 1:
        small = small.colourspace("srgb")
    flat = small.write_to_memory()
    stride = small.width * 3
    rows = [
        [list(flat[row + x : row + x + 3]) for x in range(0, stride, 3)]
        for row in range(0, len(flat), stride)
    ]
    x_components, y_components = (4, 3) if small.width >= small.height else (3, 4)
    return str(blurhash.encode(rows, x_components, y_components))


def _decode_failure(data: bytes, content_type: str, message: str) -> tuple[Reason, str]:
    lowered = message.lower()
    if "out of memory" in lowered or "cannot allocate" in lowered:
        return Reason.MEMORY, message.strip()
    lines = [line.strip() for line in message.splitlines() if line.strip() and "unable to call" not in line]
    reason = _truncated_or_corrupt(data, content_type, lowered)
    return reason, "; ".join(lines)[:200] or _DETAILS[reason]


_DETAILS = {
    Reason.TRUNCATED: "the image ends before its data does",
    Reason.DECODE_FAILED: "the image data is corrupt",
}


def _truncated_or_corrupt(data: bytes, content_type: str, message: str) -> Reason:
    if any(
        word in message.lower() for word in ("premature end", "truncated", "ends before", "unexpected end")
    ):
        return Reason.TRUNCATED
    tail = data.rstrip(b"\x00")[-16:]
    if content_type == "image/jpeg" and not tail.endswith(b"\xff\xd9"):
        return Reason.TRUNCATED
    if content_type == "image/png" and b"IEND" not in tail:
        return Reason.TRUNCATED
    if content_type == "image/gif" and not tail.endswith(b";"):
        return Reason.TRUNCATED
    return Reason.DECODE_FAILED
