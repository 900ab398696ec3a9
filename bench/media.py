"""Image processing per core: libvips (pyvips, what the media processor runs) against Pillow, with the
libvips command-line tools (C, no Python) as the floor.

    uv run python -m bench.media [--seconds 8] [--skip-memory]

One job is what the media processor does to an upload: decode under limits, orient, sRGB, strip all
metadata, write ``original`` (same format), ``preview`` (long edge 1280) and ``thumbnail`` (320), and a
BlurHash. Three fixed generated files: a 12 MP JPEG (a phone photo held upright: EXIF orientation 6,
so the pixels must be turned; the same photo with orientation 1 is a row of its own), a 2 MP PNG (a
screenshot), an animated GIF (24 frames, 480x360). Each implementation runs in this process on one
thread (libvips' concurrency 1, as in a worker); throughput is jobs per CPU-second (process CPU
time, so the other loads on a shared machine do not skew it), i.e. images per second per core.

The floor is Debian's ``vips`` + ``vipsthumbnail`` (libvips 8.14 there) doing the same three outputs
per file (``vips autorot`` to a stripped original, ``vipsthumbnail`` twice), timed by the children's
CPU time. It has no BlurHash and pays a process start per command, so it is a floor to compare with,
not a rival. It is installed by ``make bench``; when it is missing this says so loudly and skips it.

Peak memory: a fresh process per implementation handles one 50 MP JPEG (upright, then EXIF-turned)
and reports its own peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blurhash
import PIL
from PIL import Image, ImageCms, ImageOps, ImageSequence

from media_processor.transforms import ImageLimits, Reason, Rejected, Sanitized, Variant, sanitize
from tests.media import corpus

LIMITS = ImageLimits()
FILES: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "12 MP JPEG": ("photo.jpg", "image/jpeg", lambda: corpus.large_jpeg(12, orientation=6)),
    "  (upright)": ("upright.jpg", "image/jpeg", lambda: corpus.large_jpeg(12)),
    "2 MP PNG": ("screen.png", "image/png", lambda: corpus.png_photo(2)),
    "animated GIF": ("anim.gif", "image/gif", lambda: corpus.animated_gif(24, (480, 360))),
}


# --- Pillow: the same job, written as well as Pillow allows (kept here only, to be measured) ---------

_SRGB = ImageCms.createProfile("sRGB")


def pillow_sanitize(data: bytes, content_type: str, limits: ImageLimits = LIMITS) -> Sanitized | Rejected:
    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # Pillow's own bomb check, from the header
    with Image.open(io.BytesIO(data)) as source:
        frames = getattr(source, "n_frames", 1)
        if frames > 1:
            return _pillow_animated(source, content_type, frames, limits)
        source.load()
        image = ImageOps.exif_transpose(source) or source
        image = _pillow_srgb(image)
        original = _pillow_encode(image, content_type, limits, large=True)
    preview = image.copy()
    preview.thumbnail((limits.preview_edge, limits.preview_edge), Image.Resampling.LANCZOS, reducing_gap=2.0)
    thumbnail = preview.copy()
    thumbnail.thumbnail((limits.thumbnail_edge, limits.thumbnail_edge), Image.Resampling.LANCZOS)
    variant_type = "image/webp" if "A" in image.mode else "image/jpeg"
    return Sanitized(
        original,
        _pillow_encode(preview, variant_type, limits),
        _pillow_encode(thumbnail, variant_type, limits),
        _pillow_blurhash(thumbnail),
        1,
    )


def _pillow_srgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        source_profile = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        mode = "RGBA" if "A" in image.mode else "RGB"
        image = ImageCms.profileToProfile(image, source_profile, _SRGB, outputMode=mode) or image
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    return image


def _pillow_encode(
    image: Image.Image, content_type: str, limits: ImageLimits, *, large: bool = False
) -> Variant:
    buffer = io.BytesIO()
    if content_type == "image/jpeg":
        image.convert("RGB").save(
            buffer, "JPEG", quality=limits.jpeg_quality, optimize=not large, progressive=not large
        )
    elif content_type == "image/png":
        image.save(buffer, "PNG", compress_level=6)
    else:
        image.save(buffer, "WEBP", quality=limits.webp_quality)
    return Variant(buffer.getvalue(), image.width, image.height, content_type)


def _pillow_animated(
    source: Image.Image, content_type: str, frames: int, limits: ImageLimits
) -> Sanitized | Rejected:
    if frames > limits.max_frames:
        return Rejected(Reason.TOO_MANY_FRAMES, f"{frames} frames")
    full = [frame.convert("RGBA") for frame in ImageSequence.Iterator(source)]
    durations = source.info.get("duration", 100)

    def shrunk(images: list[Image.Image], edge: int) -> list[Image.Image]:
        out = []
        for frame in images:
            copy = frame.copy()
            copy.thumbnail((edge, edge), Image.Resampling.LANCZOS)
            out.append(copy)
        return out

    def encode(images: list[Image.Image], kind: str) -> Variant:
        buffer = io.BytesIO()
        first, *rest = images
        fmt = "GIF" if kind == "image/gif" else "WEBP"
        first.save(buffer, fmt, save_all=True, append_images=rest, duration=durations, loop=0)
        return Variant(buffer.getvalue(), first.width, first.height, kind)

    preview = shrunk(full, limits.preview_edge)
    thumbnail = shrunk(preview, limits.thumbnail_edge)
    return Sanitized(
        encode(full, content_type),
        encode(preview, "image/webp"),
        encode(thumbnail, "image/webp"),
        _pillow_blurhash(thumbnail[0]),
        frames,
    )


def _pillow_blurhash(thumbnail: Image.Image) -> str:
    small = thumbnail.convert("RGB")
    small.thumbnail((32, 32))
    rows = [[list(small.getpixel((x, y))) for x in range(small.width)] for y in range(small.height)]  # type: ignore[arg-type]
    x_components, y_components = (4, 3) if small.width >= small.height else (3, 4)
    return str(blurhash.encode(rows, x_components, y_components))


# --- measuring ----------------------------------------------------------------------------------------


@dataclass
class Rate:
    jobs: int
    cpu_seconds: float

    @property
    def per_core(self) -> float:
        return self.jobs / self.cpu_seconds if self.cpu_seconds else 0.0


def measure(job: Callable[[], object], seconds: float) -> Rate:
    job()  # warm: libraries loaded, caches built
    jobs, start = 0, time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or jobs < 3:
        job()
        jobs += 1
    return Rate(jobs, time.process_time() - start)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def vips_cli_commands(path: Path, content_type: str, out: Path) -> list[list[str]]:
    # ``strip``: Debian's libvips 8.14 predates ``keep=none``.
    source = f"{path}[n=-1]" if content_type == "image/gif" else str(path)
    original = {
        "image/jpeg": "original.jpg[Q=85,strip]",
        "image/png": "original.png[compression=6,strip]",
        "image/gif": "original.gif[strip]",
    }[content_type]
    variant = ".webp[Q=80,strip]" if content_type == "image/gif" else ".jpg[Q=85,optimize_coding,strip]"
    return [
        ["vips", "autorot" if content_type == "image/jpeg" else "copy", source, str(out / original)],
        ["vipsthumbnail", source, "-s", "1280", "-o", str(out / f"preview{variant}")],
        ["vipsthumbnail", source, "-s", "320", "-o", str(out / f"thumbnail{variant}")],
    ]


def measure_vips_cli(path: Path, content_type: str, seconds: float) -> Rate:
    with tempfile.TemporaryDirectory() as out:
        commands = vips_cli_commands(path, content_type, Path(out))
        env = {**os.environ, "VIPS_CONCURRENCY": "1"}
        for command in commands:  # warm the page cache; fail loudly on a bad command line
            subprocess.run(command, check=True, env=env, capture_output=True)
        jobs, start = 0, children_cpu()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or jobs < 3:
            for command in commands:
                subprocess.run(command, check=True, env=env, capture_output=True)
            jobs += 1
        return Rate(jobs, children_cpu() - start)


PEAK_SCRIPT = """
import sys
from pathlib import Path
data = Path(sys.argv[2]).read_bytes()
if sys.argv[1] == "pyvips":
    import pyvips
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    from media_processor.transforms import sanitize
else:
    from bench.media import pillow_sanitize as sanitize
result = sanitize(data, "image/jpeg")
assert result.original.width * result.original.height > 49_000_000, result
status = Path("/proc/self/status").read_text().splitlines()
print(next(line.split()[1] for line in status if line.startswith("VmHWM")))
"""


def peak_rss_mib(implementation: str, path: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, implementation, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="CPU-bound run per implementation and file"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the 50 MP peak-memory runs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 0.3 s per cell, no 50 MP runs")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.skip_memory = 0.3, True

    import pyvips

    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    vips_cli = shutil.which("vipsthumbnail") and shutil.which("vips")
    if not vips_cli:
        print("!" * 78)
        print("!!! vipsthumbnail not found: the C floor is SKIPPED (apt-get install -y libvips-tools)")
        print("!" * 78)

    print(f"images per second per core (jobs / CPU-second), {options.seconds:g} s per cell, one thread each")
    libvips = ".".join(str(pyvips.version(part)) for part in range(3))
    print(f"libvips {libvips} (pyvips-binary), Pillow {PIL.__version__}")
    header = (
        f"{'file':<14}{'pyvips':>10}{'Pillow':>10}{'vips CLI':>10}{'pyvips/Pillow':>15}{'pyvips/CLI':>12}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for label, (name, content_type, make) in FILES.items():
            data = make()
            path = Path(folder) / name
            path.write_bytes(data)
            ours = measure(functools.partial(_checked, sanitize, data, content_type), options.seconds)
            pillow = measure(
                functools.partial(_checked, pillow_sanitize, data, content_type), options.seconds
            )
            floor = measure_vips_cli(path, content_type, options.seconds) if vips_cli else None
            floor_text = f"{floor.per_core:10.2f}" if floor else f"{'skipped':>10}"
            ratio_floor = f"{ours.per_core / floor.per_core:11.0%}" if floor else f"{'-':>12}"
            print(
                f"{label:<14}{ours.per_core:10.2f}{pillow.per_core:10.2f}{floor_text}"
                f"{ours.per_core / pillow.per_core:14.1f}x {ratio_floor}"
            )
        if options.skip_memory:
            return
        print()
        print("peak RSS of one job on a 50 MP JPEG (a fresh process each, VmHWM)")
        for label, orientation in (("upright", 1), ("EXIF-turned (6)", 6)):
            path = Path(folder) / f"50mp-{orientation}.jpg"
            path.write_bytes(corpus.large_jpeg(50, orientation=orientation))
            vips_mib, pillow_mib = peak_rss_mib("pyvips", path), peak_rss_mib("pillow", path)
            print(f"  {label:<16} pyvips {vips_mib:6.0f} MiB   Pillow {pillow_mib:6.0f} MiB")


def _checked(
    implementation: Callable[[bytes, str], Sanitized | Rejected], data: bytes, content_type: str
) -> None:
    result = implementation(data, content_type)
    if not isinstance(result, Sanitized):
        raise SystemExit(f"the benchmark corpus was refused: {result}")


if __name__ == "__main__":
    main()
