"""Image sniffing and header parsing, on real images made by Pillow and on hostile bytes."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from chat_core.image_headers import HEADER_BYTES, ImageHeader, NotAnImage, inspect_image, sniff_type


def encode(fmt: str, size: tuple[int, int] = (800, 600), mode: str = "RGB", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=0).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def animated(fmt: str, size: tuple[int, int]) -> bytes:
    frames = [Image.new("RGB", size, color=(i * 40, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def with_app_segments(jpeg: bytes, count: int, size: int = 65533) -> bytes:
    """The JPEG with ``count`` APP15 segments of ``size`` bytes before its frame header (big metadata)."""
    segment = b"\xff\xef" + struct.pack(">H", size + 2) + b"\x00" * size
    return jpeg[:2] + segment * count + jpeg[2:]


def inspect_whole(data: bytes) -> ImageHeader:
    return inspect_image(data[:HEADER_BYTES], total_size=len(data))


REAL_IMAGES = {
    "jpeg baseline": (encode("JPEG"), "image/jpeg", 800, 600),
    "jpeg progressive": (encode("JPEG", (640, 480), progressive=True), "image/jpeg", 640, 480),
    "jpeg grayscale": (encode("JPEG", (31, 17), mode="L"), "image/jpeg", 31, 17),
    "jpeg cmyk": (encode("JPEG", (120, 90), mode="CMYK"), "image/jpeg", 120, 90),
    "jpeg with exif": (
        encode("JPEG", (300, 200), exif=Image.Exif().tobytes() + b"\x00" * 30000),
        "image/jpeg",
        300,
        200,
    ),
    "jpeg with icc profile": (encode("JPEG", (64, 48), icc_profile=b"\x00" * 200_000), "image/jpeg", 64, 48),
    "png rgb": (encode("PNG", (1920, 1080)), "image/png", 1920, 1080),
    "png palette": (encode("PNG", (10, 20), mode="P"), "image/png", 10, 20),
    "png 16-bit": (encode("PNG", (7, 3), mode="I;16"), "image/png", 7, 3),
    "png rgba": (encode("PNG", (1, 1), mode="RGBA"), "image/png", 1, 1),
    "gif": (encode("GIF", (320, 240), mode="P"), "image/gif", 320, 240),
    "gif animated": (animated("GIF", (50, 40)), "image/gif", 50, 40),
    "webp lossy": (encode("WEBP", (800, 600), quality=80), "image/webp", 800, 600),
    "webp lossless": (encode("WEBP", (513, 257), lossless=True), "image/webp", 513, 257),
    "webp with alpha": (encode("WEBP", (100, 50), mode="RGBA", quality=80), "image/webp", 100, 50),
    "webp animated": (animated("WEBP", (60, 30)), "image/webp", 60, 30),
    "webp large": (encode("WEBP", (16383, 2), quality=10), "image/webp", 16383, 2),
}


@pytest.mark.parametrize("case", list(REAL_IMAGES), ids=list(REAL_IMAGES))
def test_real_images_give_their_type_and_size(case: str) -> None:
    data, content_type, width, height = REAL_IMAGES[case]
    assert inspect_whole(data) == ImageHeader(content_type, width, height)


def test_the_sniffed_type_is_the_one_the_bytes_have_not_a_declared_one() -> None:
    assert sniff_type(encode("JPEG")) == "image/jpeg"
    assert sniff_type(encode("PNG")) == "image/png"
    assert sniff_type(encode("GIF", mode="P")) == "image/gif"
    assert sniff_type(encode("WEBP")) == "image/webp"


def test_a_jpeg_frame_header_found_past_large_metadata_within_the_prefix() -> None:
    data = with_app_segments(encode("JPEG", (1234, 567)), count=3)  # ~192 KiB of metadata
    assert len(data) < HEADER_BYTES
    assert inspect_whole(data) == ImageHeader("image/jpeg", 1234, 567)


def test_a_jpeg_frame_header_beyond_the_prefix_leaves_the_size_unknown() -> None:
    data = with_app_segments(encode("JPEG", (1234, 567)), count=5)  # ~320 KiB of metadata
    assert len(data) > HEADER_BYTES
    assert inspect_whole(data) == ImageHeader("image/jpeg", None, None)


def test_a_jpeg_that_ends_inside_its_metadata_is_not_an_image() -> None:
    data = with_app_segments(encode("JPEG"), count=1)[:40_000]
    with pytest.raises(NotAnImage, match="ends before its header"):
        inspect_whole(data)


def test_jpeg_fill_bytes_before_a_marker_are_skipped() -> None:
    data = encode("JPEG", (90, 45))
    padded = data[:2] + b"\xff\xff\xff" + data[2:]
    assert inspect_whole(padded) == ImageHeader("image/jpeg", 90, 45)


def test_a_jpeg_with_a_zero_height_frame_has_an_unknown_height() -> None:
    data = bytearray(encode("JPEG", (90, 45)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 7] = b"\x00\x00"  # height 0: a DNL segment would give it later
    assert inspect_whole(bytes(data)) == ImageHeader("image/jpeg", 90, None)


# --- hostile inputs -------------------------------------------------------------------------------
HOSTILE = {
    "empty": b"",
    "html": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
    "html with leading whitespace": b"   \n<html><script>alert(document.cookie)</script>",
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
    "svg bare": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "utf-8 bom then svg": b"\xef\xbb\xbf<svg/>",
    "pdf": b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
    "zip": b"PK\x03\x04" + b"\x00" * 60,
    "bmp": b"BM" + b"\x00" * 60,
    "avif": b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40,
    "riff that is not webp": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40,
    "jpeg magic then html": b"\xff\xd8\xff<html><script>alert(1)</script></html>",
    "png signature then html": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>" + b" " * 40,
    "png with a corrupt ihdr crc": encode("PNG")[:29] + b"\x00\x00\x00\x00" + encode("PNG")[33:],
    "png whose first chunk is not ihdr": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dtEXt" + b"\x00" * 40,
    "png of zero width": None,  # built below (valid CRC)
    "gif of zero size": b"GIF89a\x00\x00\x00\x00" + b"\x00" * 20,
    "webp with an unknown chunk": b"RIFF\x24\x00\x00\x00WEBPJUNK" + b"\x00" * 40,
    "webp lossy with a bad start code": b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 40,
    "jpeg soi then scan data": b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 40,
    "jpeg soi then end": b"\xff\xd8\xff\xd9",
    "jpeg with a bad segment length": b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 40,
    "jpeg segment without a marker": b"\xff\xd8\xff\xe0\x00\x04ab\x41\x42" + b"\x00" * 40,
}


def _zero_width_png() -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + b"\0" * 20
    )


HOSTILE["png of zero width"] = _zero_width_png()


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_bytes_are_not_an_image(case: str) -> None:
    data = HOSTILE[case]
    assert data is not None
    with pytest.raises(NotAnImage):
        inspect_whole(data)


def test_a_gif_polyglot_with_a_valid_header_is_a_gif_and_only_a_gif() -> None:
    # "GIF89a" + a valid screen descriptor, the rest a script: its header is a GIF's, so it is
    # accepted as image/gif (and only ever served as image/gif with nosniff).
    polyglot = b"GIF89a/*\x01\x00*/=1;alert(document.domain);//" + b"\x00" * 20
    header = inspect_whole(polyglot)
    assert header.content_type == "image/gif"
    assert header.width == 0x2A2F
    assert header.height == 1


@pytest.mark.parametrize("case", list(REAL_IMAGES), ids=list(REAL_IMAGES))
def test_every_truncation_of_a_real_image_is_refused_or_parsed_never_crashes(case: str) -> None:
    data, content_type, width, height = REAL_IMAGES[case]
    for cut in range(min(len(data), 700)):
        truncated = data[:cut]
        try:
            header = inspect_image(truncated, total_size=len(truncated))
        except NotAnImage:
            continue
        assert header == ImageHeader(content_type, width, height)


@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP"]
)
def test_random_bytes_after_a_magic_number_never_crash(magic: bytes) -> None:
    rng = random.Random(4)
    for _ in range(3000):
        data = magic + rng.randbytes(rng.randrange(0, 80))
        try:
            header = inspect_image(data, total_size=len(data))
        except NotAnImage:
            continue
        assert header.content_type == sniff_type(magic)
        assert header.width is None or header.width >= 1
        assert header.height is None or header.height >= 1


def test_a_prefix_shorter_than_a_small_header_of_a_larger_object_is_unknown_size() -> None:
    data = encode("PNG")
    assert inspect_image(data[:20], total_size=len(data)) == ImageHeader("image/png", None, None)
