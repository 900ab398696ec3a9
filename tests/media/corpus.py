"""A corpus of images the tests (and ``bench.media``) generate: every case the media pipeline must handle.

Made with Pillow and pillow-heif, so nothing binary is checked in. Each builder is cached: the large
ones (30 MP, 50 MP) take a second or two to encode.

Known colours: oriented images show a red block in their top-left corner *as displayed* on a grey
ground; the stored pixels are turned the other way, so only a pipeline that applies the EXIF
orientation puts red back in the top-left.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import pillow_heif
from PIL import ExifTags, Image, ImageCms, PngImagePlugin

RED = (220, 20, 30)
GREY = (128, 128, 128)
CORNER = 60  # the red block's side, in displayed pixels
GPS = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 2.0), 6: 12.5}
SECRETS = (b"secret-comment", b"secret-xmp", b"secret-png-text", b"secret-itxt", b"Phone Maker")

# Pillow's transpose that undoes each orientation (the inverse of what a viewer applies).
_UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_with_gps(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Phone Maker"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    return exif


def displayed(size: tuple[int, int]) -> Image.Image:
    """What a viewer must show: grey with a red block in the top-left corner."""
    image = Image.new("RGB", size, GREY)
    image.paste(RED, (0, 0, CORNER, CORNER))
    return image


@functools.cache
def jpeg_oriented(orientation: int) -> bytes:
    """A JPEG stored 400x300 with EXIF Orientation ``orientation``, GPS, XMP and a comment.

    Displayed it is 400x300 (orientations 1-4) or 300x400 (5-8), red in the top-left corner.
    """
    shown = displayed((400, 300) if orientation < 5 else (300, 400))
    stored = shown.transpose(_UNDO[orientation]) if orientation in _UNDO else shown
    assert stored.size == (400, 300)
    return _save(
        stored,
        "JPEG",
        quality=95,
        exif=exif_with_gps(orientation),
        comment=b"secret-comment",
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret-xmp</x:xmpmeta>",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )


@functools.cache
def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret-png-text")
    info.add_text("Author", "secret-png-text", zip=True)  # zTXt
    info.add_itxt("Description", "secret-itxt", lang="en")
    return _save(displayed((200, 150)), "PNG", pnginfo=info, exif=exif_with_gps())


@functools.cache
def cmyk_jpeg() -> bytes:
    """Pure CMYK red (Adobe-inverted, as Pillow writes it): must come out red, not cyan or black."""
    return _save(Image.new("CMYK", (240, 160), (0, 255, 255, 0)), "JPEG", quality=95)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_16bit(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (0xFFFF, 0x8000, 0)) -> bytes:
    """A 48-bit RGB PNG (Pillow writes only 16-bit grey, so the chunks are made here)."""
    row = b"\x00" + struct.pack(">HHH", *colour) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * height))
        + _chunk(b"IEND", b"")
    )


@functools.cache
def png_alpha() -> bytes:
    """RGBA: opaque red left half, fully transparent right half."""
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.paste((*RED, 255), (0, 0, 100, 100))
    return _save(image, "PNG")


def _frames(count: int, size: tuple[int, int]) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i % 256, 200, 255 - 30 * i % 256)) for i in range(count)]


@functools.cache
def animated_gif(frames: int = 5, size: tuple[int, int] = (480, 360)) -> bytes:
    first, *rest = _frames(frames, size)
    return _save(
        first, "GIF", save_all=True, append_images=rest, duration=80, loop=0, comment=b"secret-comment"
    )


@functools.cache
def animated_webp(frames: int = 4, size: tuple[int, int] = (400, 300)) -> bytes:
    first, *rest = _frames(frames, size)
    return _save(first, "WEBP", save_all=True, append_images=rest, duration=80, loop=0, exif=exif_with_gps())


@functools.cache
def heic(size: tuple[int, int] = (640, 480), orientation: int = 1) -> bytes:
    """An HEVC-coded HEIF (what iPhones write), with GPS EXIF, red top-left as displayed.

    With ``orientation`` the pixels are stored turned and an ``irot``/``imir`` says how to show them
    (pillow-heif turns the EXIF orientation into those, as phones write them).
    """
    shown = displayed(size)
    stored = shown.transpose(_UNDO[orientation]) if orientation in _UNDO else shown
    buffer = io.BytesIO()
    heif = pillow_heif.from_pillow(stored)
    heif.save(buffer, quality=90, exif=exif_with_gps(orientation).tobytes())
    return buffer.getvalue()


@functools.cache
def large_jpeg(megapixels: int, orientation: int = 1) -> bytes:
    """A photo-like JPEG of about ``megapixels`` MP (3:2), under the 50 MP limit when asked for 50."""
    width = int((megapixels * 1_000_000 * 1.5) ** 0.5) // 16 * 16
    height = min(megapixels * 1_000_000 // width, 50_000_000 // width)
    # A gradient with noise compresses like a photo, not like a flat colour.
    base = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 40)
    image = Image.merge("RGB", (base, noise, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return _save(image, "JPEG", quality=90, exif=exif_with_gps(orientation))


@functools.cache
def png_photo(megapixels: int = 2) -> bytes:
    width = int((megapixels * 1_000_000 * 4 / 3) ** 0.5)
    height = megapixels * 1_000_000 // width
    base = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 20)
    return _save(Image.merge("RGB", (base, noise, base.rotate(90).resize((width, height)))), "PNG")


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width`` x ``height`` (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + _chunk(b"IEND", b"")
    )


def ultra_hdr_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG with an UltraHDR gain map (what recent Android phones write): JPEG magic bytes, yet
    libvips would pick libultrahdr's loader (``uhdrload``) for it, not the JPEG one."""
    import pyvips

    black = pyvips.Image.black(*size, bands=3)
    hdr = (black.linear([1, 1, 1], [200, 30, 90]).cast("float") / 255).copy(interpretation="scrgb")
    return bytes(pyvips.Operation.call("uhdrsave_buffer", hdr))


def tiff() -> bytes:
    return _save(Image.new("RGB", (64, 48), (200, 30, 90)), "TIFF")


def svg() -> bytes:
    return (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"><rect width="64" height="48"/></svg>'
    )
