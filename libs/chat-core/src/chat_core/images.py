"""What an uploaded object really is: image type from its magic bytes, width and height from its header.

Pure Python over a bounded prefix of the object (``HEADER_BYTES``, fetched with one ranged read), so a
send never downloads the image and never hands attacker bytes to a decoder.

Where the dimensions are:

* PNG: the IHDR chunk right after the signature (bytes 8..33), its CRC checked;
* GIF: the logical screen descriptor (bytes 6..10);
* WebP: the first chunk after the RIFF header (``VP8 ``, ``VP8L`` or ``VP8X``, within 30 bytes);
* JPEG: the SOFn segment, found by walking the segments after SOI. APPn segments (EXIF with its
  thumbnail, XMP, ICC profiles) come first and may each be up to 64 KiB, so the SOF of a phone photo
  is usually within a few tens of KiB. ``HEADER_BYTES`` = 256 KiB covers the common worst cases
  (EXIF + XMP + a multi-segment ICC profile). When the SOF lies beyond the prefix the image is still
  accepted on its magic bytes and well-formed segments, with width and height unknown (``None``): the
  spec marks them optional, and a client-supplied value is never used instead.

Anything else raises ``NotAnImage``: wrong or missing magic bytes (HTML, SVG, text, other formats), a
header that contradicts itself, or an object that ends before its header does. A polyglot whose first
bytes form a valid header (``GIF89a`` + valid screen descriptor + script) is, as far as its header
goes, a GIF: it is accepted as ``image/gif`` and the proxy always serves it as such with
``X-Content-Type-Options: nosniff``, so a browser never runs it as something else.
"""

from __future__ import annotations

import struct
import zlib

import msgspec

__all__ = ["HEADER_BYTES", "ImageHeader", "NotAnImage", "inspect_image", "sniff_type"]

HEADER_BYTES = 256 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range but carry no frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0..7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


class NotAnImage(ValueError):
    """The bytes are not an image of an accepted type; ``str()`` says why, for the client."""


class ImageHeader(msgspec.Struct, frozen=True):
    content_type: str
    width: int | None
    height: int | None


class _Truncated(Exception):
    """The header continues past the bytes we have."""


def sniff_type(data: bytes) -> str | None:
    """The image type the magic bytes announce (jpeg, png, gif, webp), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect_image(prefix: bytes, *, total_size: int) -> ImageHeader:
    """Type and dimensions of an object whose first bytes are ``prefix`` and whose size is ``total_size``.

    Raises NotAnImage. ``width``/``height`` are None only when the header lies beyond ``prefix`` in a
    larger object (JPEG with very large metadata segments).
    """
    content_type = sniff_type(prefix)
    if content_type is None:
        raise NotAnImage("the bytes are not a JPEG, PNG, GIF or WebP image")
    parse = _PARSERS[content_type]
    try:
        width, height = parse(prefix)
    except _Truncated:
        if len(prefix) >= total_size:
            raise NotAnImage(f"the {_name(content_type)} ends before its header does") from None
        return ImageHeader(content_type, None, None)
    except (struct.error, IndexError):
        raise NotAnImage(f"the {_name(content_type)} ends before its header does") from None
    if (width is not None and width < 1) or (height is not None and height < 1):
        raise NotAnImage(f"the {_name(content_type)} header gives an empty size")
    return ImageHeader(content_type, width, height)


def _name(content_type: str) -> str:
    return content_type.removeprefix("image/").upper() + " image"


def _need(data: bytes, end: int) -> None:
    if len(data) < end:
        raise _Truncated


def _png(data: bytes) -> tuple[int | None, int | None]:
    _need(data, 33)  # signature (8) + IHDR length (4) + type (4) + data (13) + CRC (4)
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise NotAnImage("the PNG image does not start with its IHDR chunk")
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        raise NotAnImage("the PNG image's IHDR chunk is corrupt")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _gif(data: bytes) -> tuple[int | None, int | None]:
    _need(data, 10)
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


def _webp(data: bytes) -> tuple[int | None, int | None]:
    _need(data, 16)
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        _need(data, 30)
        if data[23:26] != b"\x9d\x01\x2a":
            raise NotAnImage("the WebP image's VP8 frame header is corrupt")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: a signature byte, then 14-bit sizes minus one
        _need(data, 25)
        if data[20] != 0x2F:
            raise NotAnImage("the WebP image's VP8L header is corrupt")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        _need(data, 30)
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise NotAnImage("the WebP image has no VP8, VP8L or VP8X chunk")


def _jpeg(data: bytes) -> tuple[int | None, int | None]:
    position = 2  # after SOI
    while True:
        _need(data, position + 2)
        if data[position] != 0xFF:
            raise NotAnImage("the JPEG image's segments are corrupt")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        position += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI) or marker == 0x00:
            raise NotAnImage("the JPEG image has no frame header before its data")
        _need(data, position + 2)
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2:
            raise NotAnImage("the JPEG image's segments are corrupt")
        if marker in _JPEG_SOF:
            _need(data, position + 7)
            if length < 8:
                raise NotAnImage("the JPEG image's frame header is corrupt")
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            # Height 0 is legal (a later DNL segment gives it): unknown, not invalid.
            return width, height or None
        position += length


_PARSERS = {"image/jpeg": _jpeg, "image/png": _png, "image/gif": _gif, "image/webp": _webp}
