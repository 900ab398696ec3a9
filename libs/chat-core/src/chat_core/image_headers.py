"""What an uploaded object really is: image type from its magic bytes, width and height from its header.

Pure Python over a bounded prefix of the object (``HEADER_BYTES``, fetched with one ranged read), so a
send never downloads the image and never hands attacker bytes to a decoder.

Where the dimensions are:

* PNG: the IHDR chunk right after the signature (bytes 8..33), its CRC checked;
* GIF: the logical screen descriptor (bytes 6..10);
* WebP: the first chunk after the RIFF header (``VP8 ``, ``VP8L`` or ``VP8X``, within 30 bytes);
* HEIC/HEIF: the ``ispe`` property of the primary item (``meta`` > ``pitm``, ``iprp`` > ``ipco``/``ipma``),
  swapped when its ``irot`` turns it a quarter: what viewers display. ``meta`` precedes ``mdat`` in
  the files phones write; a ``meta`` past the prefix gives unknown (``None``) dimensions, as for JPEG;
* JPEG: the SOFn segment, found by walking the segments after SOI; width and height are swapped when
  the EXIF ``Orientation`` (APP1, read on the way) is 5-8, since every viewer shows it turned. APPn
  segments (EXIF with its thumbnail, XMP, ICC profiles) come first and may each be up to 64 KiB, so
  the SOF of a phone photo is usually within a few tens of KiB. ``HEADER_BYTES`` = 256 KiB covers the
  common worst cases (EXIF + XMP + a multi-segment ICC profile). When the SOF lies beyond the prefix
  the image is still accepted on its magic bytes and well-formed segments, with width and height
  unknown (``None``): the spec marks them optional, and a client-supplied value is never used instead.

``refuse_too_many_pixels(header, max_pixels)`` refuses a header that declares more pixels than allowed
(a 100000x100000 PNG is a few hundred bytes), before anything decodes it.

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

__all__ = [
    "HEADER_BYTES",
    "ImageHeader",
    "NotAnImage",
    "TooManyPixels",
    "inspect_image",
    "refuse_too_many_pixels",
    "sniff_type",
]

HEADER_BYTES = 256 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range but carry no frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0..7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


class NotAnImage(ValueError):
    """The bytes are not an image of an accepted type; ``str()`` says why, for the client."""


class TooManyPixels(ValueError):
    """The header declares more pixels than the limit; ``str()`` says how many, for the client."""


class ImageHeader(msgspec.Struct, frozen=True):
    """Type and dimensions as displayed (EXIF orientation / HEIF rotation applied)."""

    content_type: str
    width: int | None
    height: int | None


def refuse_too_many_pixels(header: ImageHeader, max_pixels: int) -> None:
    """Raise TooManyPixels if the header declares more than ``max_pixels`` (unknown sizes pass)."""
    if header.width is not None and header.height is not None and header.width * header.height > max_pixels:
        raise TooManyPixels(
            f"the image declares {header.width}x{header.height} pixels, more than the {max_pixels} allowed"
        )


class _Truncated(Exception):
    """The header continues past the bytes we have."""


def sniff_type(data: bytes) -> str | None:
    """The image type the magic bytes announce (jpeg, png, gif, webp, heic, heif), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _heif_type(data)
    return None


# Major brands of HEVC-coded HEIF (what phones write) and of generic HEIF image files. AVIF shares the
# container (``mif1``/``msf1`` + an ``avif`` compatible brand) and is not accepted.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif"})


def _heif_type(data: bytes) -> str | None:
    (size,) = struct.unpack(">I", data[:4])
    brand = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, min(size, len(data), 256) - 3, 4)}
    if brand in _HEIC_BRANDS:
        return "image/heic"
    if brand in _HEIF_BRANDS and not compatible & {b"avif", b"avis"}:
        return "image/heic" if compatible & _HEIC_BRANDS else "image/heif"
    return None


def inspect_image(prefix: bytes, *, total_size: int) -> ImageHeader:
    """Type and dimensions of an object whose first bytes are ``prefix`` and whose size is ``total_size``.

    Raises NotAnImage. ``width``/``height`` are None only when the header lies beyond ``prefix`` in a
    larger object (JPEG with very large metadata segments).
    """
    content_type = sniff_type(prefix)
    if content_type is None:
        raise NotAnImage("the bytes are not a JPEG, PNG, GIF, WebP or HEIC/HEIF image")
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


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The ISO BMFF boxes in ``data[start:end]`` as (type, payload start, payload end)."""
    found = []
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        header = 8
        if size == 1:
            _need(data, start + 16)
            (size,) = struct.unpack(">Q", data[start + 8 : start + 16])
            header = 16
        elif size == 0:
            size = end - start
        if size < header:
            raise NotAnImage("the HEIF image's boxes are corrupt")
        found.append((kind, start + header, start + size))
        start += size
    return found


def _heif(data: bytes) -> tuple[int | None, int | None]:
    meta = next(((s, e) for kind, s, e in _boxes(data, 0, len(data)) if kind == b"meta"), None)
    if meta is None:
        raise _Truncated  # the meta box lies past the prefix (or nowhere: inspect_image tells which)
    start, end = meta
    _need(data, end)
    children = {kind: (s, e) for kind, s, e in _boxes(data, start + 4, end)}  # FullBox: skip version+flags
    if b"pitm" not in children or b"iprp" not in children:
        raise NotAnImage("the HEIF image has no primary item")
    s, _ = children[b"pitm"]
    primary = (
        struct.unpack(">H", data[s + 4 : s + 6])[0]
        if data[s] == 0
        else struct.unpack(">I", data[s + 4 : s + 8])[0]
    )
    iprp = {kind: (s, e) for kind, s, e in _boxes(data, *children[b"iprp"])}
    if b"ipco" not in iprp or b"ipma" not in iprp:
        raise NotAnImage("the HEIF image has no item properties")
    properties = _boxes(data, *iprp[b"ipco"])
    width = height = None
    quarter_turn = False
    for index in _heif_item_properties(data, *iprp[b"ipma"], item=primary):
        if not 1 <= index <= len(properties):
            raise NotAnImage("the HEIF image's item properties are corrupt")
        kind, s, _ = properties[index - 1]
        if kind == b"ispe":
            width, height = struct.unpack(">II", data[s + 4 : s + 12])
        elif kind == b"irot":
            quarter_turn = data[s] & 1 == 1
    if width is None or height is None:
        raise NotAnImage("the HEIF image's primary item has no size")
    return (height, width) if quarter_turn else (width, height)


def _heif_item_properties(data: bytes, start: int, end: int, *, item: int) -> list[int]:
    version, flags = data[start], int.from_bytes(data[start + 1 : start + 4], "big")
    (count,) = struct.unpack(">I", data[start + 4 : start + 8])
    position = start + 8
    for _ in range(count):
        if version < 1:
            (item_id,) = struct.unpack(">H", data[position : position + 2])
            position += 2
        else:
            (item_id,) = struct.unpack(">I", data[position : position + 4])
            position += 4
        associations = data[position]
        position += 1
        wide = flags & 1
        indices = []
        for _ in range(associations):
            if wide:
                (value,) = struct.unpack(">H", data[position : position + 2])
                indices.append(value & 0x7FFF)
                position += 2
            else:
                indices.append(data[position] & 0x7F)
                position += 1
        if position > end:
            raise NotAnImage("the HEIF image's item properties are corrupt")
        if item_id == item:
            return indices
    return []


def _exif_orientation(segment: bytes) -> int:
    """The Orientation tag (1-8) of an APP1 payload, 1 when it has none or is not EXIF."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
            if tag == 0x0112 and kind == 3:  # Orientation, SHORT
                (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1  # a broken EXIF block does not make a broken image: viewers ignore it too
    return 1


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
    orientation = 1
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
            if orientation >= 5:  # 5-8 turn the image a quarter: displayed width is the stored height
                return height or None, width
            return width, height or None
        if marker == 0xE1 and orientation == 1:
            _need(data, position + length)
            orientation = _exif_orientation(data[position + 2 : position + length])
        position += length


_PARSERS = {
    "image/jpeg": _jpeg,
    "image/png": _png,
    "image/gif": _gif,
    "image/webp": _webp,
    "image/heic": _heif,
    "image/heif": _heif,
}
