"""Header sniffing at send: HEIC/HEIF, sizes as displayed (EXIF orientation), and the pixel limit."""

from __future__ import annotations

import pytest

from chat_core.image_headers import (
    HEADER_BYTES,
    ImageHeader,
    NotAnImage,
    TooManyPixels,
    inspect_image,
    refuse_too_many_pixels,
    sniff_type,
)
from tests.media import corpus


def inspect_whole(data: bytes) -> ImageHeader:
    return inspect_image(data[:HEADER_BYTES], total_size=len(data))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_size_is_the_displayed_one(orientation: int) -> None:
    expected = (400, 300) if orientation < 5 else (300, 400)  # stored 400x300 every time
    assert inspect_whole(corpus.jpeg_oriented(orientation)) == ImageHeader("image/jpeg", *expected)


def test_a_heic_gives_its_type_and_size() -> None:
    assert inspect_whole(corpus.heic((640, 480))) == ImageHeader("image/heic", 640, 480)


def test_a_turned_heic_gives_its_displayed_size() -> None:
    assert inspect_whole(corpus.heic((640, 480), orientation=6)) == ImageHeader("image/heic", 640, 480)
    assert inspect_whole(corpus.heic((480, 640), orientation=8)) == ImageHeader("image/heic", 480, 640)


def test_generic_heif_brands_are_image_heif_and_avif_is_refused() -> None:
    heic = corpus.heic()
    mif1_only = heic[:8] + b"mif1" + heic[12:16] + b"mif1" * ((int.from_bytes(heic[:4], "big") - 16) // 4)
    assert sniff_type(mif1_only) == "image/heif"
    avif = heic[:8] + b"avif" + heic[12:]
    assert sniff_type(avif) is None
    with pytest.raises(NotAnImage):
        inspect_whole(avif)


def test_a_heic_cut_before_its_meta_box_is_not_an_image() -> None:
    with pytest.raises(NotAnImage):
        inspect_whole(corpus.heic()[:40])


def test_a_header_declaring_too_many_pixels_is_refused() -> None:
    header = inspect_whole(corpus.png_declaring(100_000, 100_000))
    assert header == ImageHeader("image/png", 100_000, 100_000)
    with pytest.raises(TooManyPixels, match="100000x100000"):
        refuse_too_many_pixels(header, 50_000_000)


def test_a_header_within_the_limit_passes() -> None:
    refuse_too_many_pixels(inspect_whole(corpus.large_jpeg(30)), 50_000_000)
    refuse_too_many_pixels(ImageHeader("image/jpeg", None, None), 1)  # unknown size: decided later
