"""Readers that look into encoded bytes for what the pipeline promises to remove."""

from __future__ import annotations

import io
import struct

from PIL import Image

from tests.media.corpus import SECRETS


def jpeg_markers(data: bytes) -> list[int]:
    """The markers of a JPEG's segments up to its scan data."""
    assert data[:2] == b"\xff\xd8"
    markers, position = [], 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        position += 2 + length
    return markers


def png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, position = [], 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        kinds.append(kind)
        position += 12 + length
    return kinds


def webp_chunks(data: bytes) -> list[bytes]:
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WEBP"
    kinds, position = [], 12
    while position + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[position : position + 8])
        kinds.append(kind)
        position += 8 + length + (length & 1)
    return kinds


def metadata_left(data: bytes, content_type: str) -> list[str]:
    """Every trace of metadata in ``data``, by raw scan and by Pillow; empty when clean."""
    found = [f"bytes {secret!r}" for secret in SECRETS if secret in data]
    if b"Exif\x00\x00" in data:
        found.append("an Exif block")
    if content_type == "image/jpeg":
        # APP1 (EXIF/XMP), APP2 (ICC), APP13 (IPTC), COM; APP0 (JFIF) carries no user data.
        found += [
            f"JPEG marker {marker:#x}" for marker in jpeg_markers(data) if marker in (0xE1, 0xE2, 0xED, 0xFE)
        ]
    elif content_type == "image/png":
        metadata_chunks = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"tIME"}
        found += [f"PNG chunk {kind!r}" for kind in png_chunks(data) if kind in metadata_chunks]
    elif content_type == "image/webp":
        found += [f"WebP chunk {kind!r}" for kind in webp_chunks(data) if kind in (b"EXIF", b"XMP ", b"ICCP")]
    elif content_type == "image/gif" and b"\x21\xfe" in data:
        found.append("a GIF comment extension")
    with Image.open(io.BytesIO(data)) as image:
        if len(image.getexif()):
            found.append(f"EXIF tags {dict(image.getexif())}")
        found += [f"Pillow info {key!r}" for key in image.info if key in _PILLOW_METADATA]
        found += [f"PNG text {key!r}" for key in getattr(image, "text", {})]
    return found


_PILLOW_METADATA = {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "photoshop", "adobe"}


def frame_count(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return int(getattr(image, "n_frames", 1))


def pixel(data: bytes, x: int, y: int) -> tuple[int, ...]:
    """The RGB(A) value at (x, y); negative coordinates count from the right/bottom."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgb = image.convert("RGBA" if "A" in image.mode else "RGB")
        value = rgb.getpixel((x % rgb.width, y % rgb.height))
        assert isinstance(value, tuple)
        return value


def close(colour: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=False))
