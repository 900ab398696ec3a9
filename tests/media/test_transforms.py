"""transforms.sanitize on the generated corpus: assertions on the bytes it writes."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import blurhash
import pytest
import pyvips
from PIL import Image

from media_processor.transforms import (
    ImageLimits,
    Reason,
    Rejected,
    Sanitized,
    Variant,
    restrict_loaders,
    sanitize,
)
from media_processor.worker import limits_from
from tests.conftest import make_settings
from tests.media import corpus
from tests.media.inspect import close, frame_count, metadata_left, pixel

CLEAN_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    **{f"jpeg orientation {o}": (lambda o=o: corpus.jpeg_oriented(o), "image/jpeg") for o in range(1, 9)},  # type: ignore[misc]
    "png with text chunks": (corpus.png_with_text, "image/png"),
    "cmyk jpeg": (corpus.cmyk_jpeg, "image/jpeg"),
    "16-bit png": (corpus.png_16bit, "image/png"),
    "alpha png": (corpus.png_alpha, "image/png"),
    "animated gif": (corpus.animated_gif, "image/gif"),
    "animated webp": (corpus.animated_webp, "image/webp"),
    "heic": (corpus.heic, "image/heic"),
}


def sanitized(data: bytes, content_type: str, limits: ImageLimits | None = None) -> Sanitized:
    result = sanitize(data, content_type, limits or ImageLimits())
    assert isinstance(result, Sanitized), result
    return result


def variants(result: Sanitized) -> dict[str, Variant]:
    return {"original": result.original, "preview": result.preview, "thumbnail": result.thumbnail}


def decoded_size(variant: Variant) -> tuple[int, int]:
    with Image.open(io.BytesIO(variant.data)) as image:
        assert Image.MIME[image.format or ""] == variant.content_type
        return image.size


@pytest.mark.parametrize("case", list(CLEAN_CASES))
def test_no_metadata_is_left_in_any_variant(case: str) -> None:
    make, content_type = CLEAN_CASES[case]
    for name, variant in variants(sanitized(make(), content_type)).items():
        assert metadata_left(variant.data, variant.content_type) == [], name


@pytest.mark.parametrize("case", list(CLEAN_CASES))
def test_each_variant_is_what_it_says_and_within_its_bounds(case: str) -> None:
    make, content_type = CLEAN_CASES[case]
    result = sanitized(make(), content_type)
    for name, variant in variants(result).items():
        assert decoded_size(variant) == (variant.width, variant.height), name
        assert variant.size == len(variant.data) > 0
    assert max(result.preview.width, result.preview.height) <= 1280
    assert max(result.thumbnail.width, result.thumbnail.height) <= 320


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_exif_orientation_is_applied_to_the_pixels(orientation: int) -> None:
    result = sanitized(corpus.jpeg_oriented(orientation), "image/jpeg")
    expected = (400, 300) if orientation < 5 else (300, 400)
    assert (result.original.width, result.original.height) == expected
    for name, variant in variants(result).items():
        assert close(pixel(variant.data, 2, 2), corpus.RED), (name, pixel(variant.data, 2, 2))
        assert close(pixel(variant.data, -3, -3), corpus.GREY), name
        assert close(pixel(variant.data, -3, 2), corpus.GREY), name  # not mirrored
        assert close(pixel(variant.data, 2, -3), corpus.GREY), name  # not flipped


def test_the_original_keeps_its_format_and_full_size() -> None:
    data = corpus.large_jpeg(30)
    with Image.open(io.BytesIO(data)) as source:
        size = source.size
    result = sanitized(data, "image/jpeg")
    assert (result.original.content_type, result.original.width, result.original.height) == (
        "image/jpeg",
        *size,
    )
    assert result.preview.width == 1280  # landscape: the long edge
    assert result.thumbnail.width == 320
    assert abs(result.preview.height - round(1280 * size[1] / size[0])) <= 1


def test_variant_sizes_are_configurable() -> None:
    result = sanitized(
        corpus.jpeg_oriented(1), "image/jpeg", ImageLimits(preview_edge=200, thumbnail_edge=50)
    )
    assert (result.preview.width, result.preview.height) == (200, 150)
    assert (result.thumbnail.width, result.thumbnail.height) == (50, 38)


def test_small_images_are_never_enlarged() -> None:
    result = sanitized(corpus.png_16bit(64, 48), "image/png")
    assert {(v.width, v.height) for v in variants(result).values()} == {(64, 48)}


@pytest.mark.parametrize(("make", "content_type", "frames"), [
    (corpus.animated_gif, "image/gif", 5),
    (corpus.animated_webp, "image/webp", 4),
])  # fmt: skip
def test_animation_is_kept_in_every_variant(
    make: Callable[[], bytes], content_type: str, frames: int
) -> None:
    result = sanitized(make(), content_type)
    assert result.frames == frames
    assert result.original.content_type == content_type
    for name, variant in variants(result).items():
        assert frame_count(variant.data) == frames, name
    assert result.thumbnail.content_type == "image/webp"
    assert (result.thumbnail.width, result.thumbnail.height) == (320, 240)


def test_heic_becomes_a_jpeg_the_browser_can_show() -> None:
    result = sanitized(corpus.heic(), "image/heic")
    assert result.original.content_type == "image/jpeg"
    assert (result.original.width, result.original.height) == (640, 480)
    assert close(pixel(result.original.data, 2, 2), corpus.RED)
    assert close(pixel(result.original.data, -3, -3), corpus.GREY)


def test_a_cmyk_jpeg_keeps_its_colour() -> None:
    result = sanitized(corpus.cmyk_jpeg(), "image/jpeg")
    with Image.open(io.BytesIO(result.original.data)) as image:
        assert image.mode == "RGB"
    red, green, blue = pixel(result.original.data, 10, 10)
    assert (red > 180, green < 80, blue < 80) == (True, True, True), (red, green, blue)


def test_a_16_bit_png_becomes_8_bit_with_its_colour() -> None:
    result = sanitized(corpus.png_16bit(colour=(0xFFFF, 0x8000, 0)), "image/png")
    with Image.open(io.BytesIO(result.original.data)) as image:
        assert image.mode == "RGB"
    assert close(pixel(result.original.data, 5, 5), (255, 128, 0), tolerance=3)


def test_alpha_is_kept() -> None:
    result = sanitized(corpus.png_alpha(), "image/png")
    assert result.original.content_type == "image/png"
    assert result.preview.content_type == result.thumbnail.content_type == "image/webp"
    for name, variant in variants(result).items():
        assert close(pixel(variant.data, 2, 2), (*corpus.RED, 255)), name
        assert pixel(variant.data, -3, -3)[3] == 0, name


@pytest.mark.parametrize("case", list(CLEAN_CASES))
def test_the_blurhash_decodes_to_the_thumbnail_size(case: str) -> None:
    make, content_type = CLEAN_CASES[case]
    result = sanitized(make(), content_type)
    assert blurhash.components(result.blurhash) in ((4, 3), (3, 4))
    placeholder = blurhash.decode(result.blurhash, result.thumbnail.width, result.thumbnail.height)
    assert len(placeholder) == result.thumbnail.height
    assert {len(row) for row in placeholder} == {result.thumbnail.width}


def test_the_blurhash_carries_the_image_colour() -> None:
    placeholder = blurhash.decode(sanitized(corpus.cmyk_jpeg(), "image/jpeg").blurhash, 8, 8)
    red, green, blue = placeholder[4][4]
    assert (red > 150, green < 100, blue < 100) == (True, True, True), (red, green, blue)


FAILURES: dict[str, tuple[Callable[[], bytes], str, Reason, ImageLimits]] = {
    "truncated jpeg": (
        lambda: corpus.truncated(corpus.jpeg_oriented(1)),
        "image/jpeg",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "jpeg cut in its header": (
        lambda: corpus.jpeg_oriented(1)[:300],
        "image/jpeg",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "truncated png": (
        lambda: corpus.truncated(corpus.png_with_text()),
        "image/png",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "truncated gif": (
        lambda: corpus.truncated(corpus.animated_gif()),
        "image/gif",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "truncated webp": (
        lambda: corpus.truncated(corpus.animated_webp()),
        "image/webp",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "truncated heic": (
        lambda: corpus.truncated(corpus.heic(), 0.7),
        "image/heic",
        Reason.TRUNCATED,
        ImageLimits(),
    ),
    "corrupt jpeg data": (
        lambda: corpus.jpeg_oriented(1)[:700] + bytes(range(256)) * 40 + b"\xff\xd9",
        "image/jpeg",
        Reason.DECODE_FAILED,
        ImageLimits(),
    ),
    "png declaring 100000x100000": (
        lambda: corpus.png_declaring(100_000, 100_000),
        "image/png",
        Reason.TOO_MANY_PIXELS,
        ImageLimits(),
    ),
    "30 MP over a 20 MP limit": (
        lambda: corpus.large_jpeg(30),
        "image/jpeg",
        Reason.TOO_MANY_PIXELS,
        ImageLimits(max_pixels=20_000_000),
    ),
    "too many frames": (
        lambda: corpus.animated_gif(12, (16, 16)),
        "image/gif",
        Reason.TOO_MANY_FRAMES,
        ImageLimits(max_frames=10),
    ),
    "animation too large in all": (
        lambda: corpus.animated_gif(5, (480, 360)),
        "image/gif",
        Reason.TOO_MANY_PIXELS,
        ImageLimits(max_animation_pixels=500_000),
    ),
    "text": (
        lambda: b"hello, this is not an image" * 10,
        "image/png",
        Reason.UNSUPPORTED_TYPE,
        ImageLimits(),
    ),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "image/svg+xml",
        Reason.UNSUPPORTED_TYPE,
        ImageLimits(),
    ),
    "empty": (lambda: b"", "image/jpeg", Reason.UNSUPPORTED_TYPE, ImageLimits()),
    "png declared as jpeg": (corpus.png_alpha, "image/jpeg", Reason.CONTENT_TYPE_MISMATCH, ImageLimits()),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_every_failure_has_a_reason_code(case: str) -> None:
    make, content_type, reason, limits = FAILURES[case]
    result = sanitize(make(), content_type, limits)
    assert isinstance(result, Rejected)
    assert result.reason is reason, result
    assert result.detail


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_turned_heic_is_turned_upright(orientation: int) -> None:
    result = sanitized(corpus.heic((640, 480), orientation=orientation), "image/heic")
    assert (result.original.width, result.original.height) == (640, 480)
    assert close(pixel(result.original.data, 2, 2), corpus.RED)
    assert close(pixel(result.original.data, -3, -3), corpus.GREY)


# --- only the accepted formats' decoders -----------------------------------------------------------
def test_an_ultra_hdr_jpeg_is_read_by_the_jpeg_loader_never_libultrahdr() -> None:
    data = corpus.ultra_hdr_jpeg()
    assert data.startswith(b"\xff\xd8\xff")  # passes the magic-byte check as a JPEG
    assert pyvips.Image.new_from_buffer(data, "").get("vips-loader") == "jpegload_buffer"
    with pytest.raises(pyvips.Error, match="blocked"):
        pyvips.Operation.call("uhdrload_buffer", data)
    result = sanitized(data, "image/jpeg")
    assert result.original.content_type == "image/jpeg"
    assert metadata_left(result.original.data, "image/jpeg") == []


@pytest.mark.parametrize(
    "make",
    [corpus.tiff, corpus.svg, corpus.heic],
    ids=["tiff", "svg", "heif"],  # each has a loader in the libvips wheel; HEIF goes to pillow-heif
)
def test_libvips_decodes_no_format_that_is_not_accepted_through_it(make: Callable[[], bytes]) -> None:
    with pytest.raises(pyvips.Error, match="not in a known format"):
        pyvips.Image.new_from_buffer(make(), "")


def test_a_file_another_loader_would_read_is_refused() -> None:
    # Defence in depth behind the block: the loader that opened the header must be the sniffed type's.
    pyvips.operation_block_set("VipsForeignLoadUhdr", False)
    try:
        result = sanitize(corpus.ultra_hdr_jpeg(), "image/jpeg")
    finally:
        restrict_loaders()
    assert isinstance(result, Rejected)
    assert result.reason == Reason.UNSUPPORTED_TYPE
    assert "uhdrload" in result.detail


def test_the_animation_limit_is_a_setting_the_processor_honours(tmp_path: Path) -> None:
    """MAX_ANIMATION_PIXELS was a constant of one module alone; now every image limit is one setting."""
    settings = make_settings(tmp_path, {"MAX_ANIMATION_PIXELS": "500000"})
    result = sanitize(corpus.animated_gif(5, (480, 360)), "image/gif", limits_from(settings))
    assert isinstance(result, Rejected)
    assert result.reason == Reason.TOO_MANY_PIXELS
    assert isinstance(sanitize(corpus.animated_gif(5, (480, 360)), "image/gif", ImageLimits()), Sanitized)


def test_every_image_limit_comes_from_the_settings(tmp_path: Path) -> None:
    env = {
        "MAX_IMAGE_PIXELS": "1000",
        "MAX_IMAGE_FRAMES": "3",
        "MAX_ANIMATION_PIXELS": "2000",
        "MEDIA_PREVIEW_EDGE": "100",
        "MEDIA_THUMBNAIL_EDGE": "20",
    }
    assert limits_from(make_settings(tmp_path, env)) == ImageLimits(
        max_pixels=1000, max_frames=3, max_animation_pixels=2000, preview_edge=100, thumbnail_edge=20
    )
    # and the processor's defaults are the settings' defaults, not numbers of its own
    assert ImageLimits() == limits_from(make_settings(tmp_path))
