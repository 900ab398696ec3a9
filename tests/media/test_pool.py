"""The worker pool: results from other processes, and jobs that run too long, use too much or crash."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from media_processor.imaging import Reason, Rejected, Sanitized
from media_processor.pool import MediaProcessor, PoolSettings
from tests.media import corpus
from tests.media.inspect import metadata_left

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def processor() -> AsyncIterator[MediaProcessor]:
    async with MediaProcessor(pool=PoolSettings(workers=1, timeout_seconds=60)) as media:
        yield media


async def test_a_worker_returns_the_sanitized_image(processor: MediaProcessor) -> None:
    result = await processor.process(corpus.jpeg_oriented(6), "image/jpeg")
    assert isinstance(result, Sanitized)
    assert (result.original.width, result.original.height) == (300, 400)
    assert metadata_left(result.original.data, "image/jpeg") == []


async def test_a_worker_reads_an_ultra_hdr_jpeg_with_the_jpeg_loader(processor: MediaProcessor) -> None:
    # In the worker process too, only the accepted formats' loaders run (libultrahdr's would be picked
    # otherwise, and the loader check would then refuse the image).
    result = await processor.process(corpus.ultra_hdr_jpeg(), "image/jpeg")
    assert isinstance(result, Sanitized), result


async def test_a_rejection_comes_back_with_its_reason(processor: MediaProcessor) -> None:
    result = await processor.process(corpus.png_declaring(100_000, 100_000), "image/png")
    assert result == Rejected(Reason.TOO_MANY_PIXELS, "10000000000 pixels, the limit is 50000000")


async def test_a_job_past_its_time_is_killed_and_the_next_job_runs() -> None:
    async with MediaProcessor(pool=PoolSettings(workers=1, timeout_seconds=0.05)) as media:
        [before] = media.worker_pids
        result = await media.process(corpus.large_jpeg(30), "image/jpeg")
        assert isinstance(result, Rejected)
        assert result.reason is Reason.TIMEOUT, result
        [after] = media.worker_pids
        assert after != before
    async with MediaProcessor(pool=PoolSettings(workers=1)) as media:
        assert isinstance(await media.process(corpus.jpeg_oriented(1), "image/jpeg"), Sanitized)


async def test_a_job_past_its_memory_fails_with_memory_and_the_worker_is_replaced() -> None:
    # Libraries and thread stacks take most of 200 MB of address space; a turned 30 MP JPEG needs a
    # whole decoded frame (90 MB) on top, which is not left.
    rotated = corpus.large_jpeg(30, orientation=6)
    async with MediaProcessor(pool=PoolSettings(workers=1, memory_bytes=200_000_000)) as media:
        [before] = media.worker_pids
        result = await media.process(rotated, "image/jpeg")
        assert isinstance(result, Rejected)
        assert result.reason is Reason.MEMORY, result
        assert media.worker_pids != [before]
        assert isinstance(await media.process(corpus.jpeg_oriented(1), "image/jpeg"), Sanitized)


async def test_a_crashed_worker_fails_only_its_job(processor: MediaProcessor) -> None:
    [worker] = processor.worker_pids
    job = processor.process(corpus.large_jpeg(30), "image/jpeg")
    task = asyncio.ensure_future(job)
    await asyncio.sleep(0.3)  # the job is running
    os.kill(worker, signal.SIGSEGV)
    result = await task
    assert isinstance(result, Rejected)
    assert result.reason is Reason.WORKER_CRASHED, result
    assert isinstance(await processor.process(corpus.jpeg_oriented(1), "image/jpeg"), Sanitized)


async def test_jobs_run_side_by_side_on_the_workers() -> None:
    async with MediaProcessor(pool=PoolSettings(workers=2)) as media:
        assert len(media.worker_pids) == 2
        results = await asyncio.gather(*(media.process(corpus.heic(), "image/heic") for _ in range(4)))
    assert all(isinstance(result, Sanitized) for result in results)


@pytest.mark.parametrize("orientation", [1, 6], ids=["upright", "turned"])
def test_a_50_mp_image_stays_under_300_mb_in_the_worker(tmp_path: Path, orientation: int) -> None:
    """Measured in a fresh process, so the worker's peak RSS is its own (ru_maxrss survives fork+exec)."""
    image = tmp_path / "50mp.jpg"
    image.write_bytes(corpus.large_jpeg(50, orientation=orientation))
    script = textwrap.dedent(
        f"""
        import asyncio, resource, sys
        from media_processor.pool import MediaProcessor, PoolSettings

        async def main() -> None:
            data = open({str(image)!r}, "rb").read()
            async with MediaProcessor(pool=PoolSettings(workers=1)) as media:
                result = await media.process(data, "image/jpeg")
            print(type(result).__name__, result.original.width * result.original.height)
            print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)

        if __name__ == "__main__":
            asyncio.run(main())
        """
    )
    (tmp_path / "measure.py").write_text(script)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "measure.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=100,
    )
    kind, pixels, peak = done.stdout.split()
    assert kind == "Sanitized"
    assert int(pixels) > 49_000_000
    print(f"peak RSS {int(peak) / 2**20:.0f} MiB")
    assert int(peak) < 300 * 1024 * 1024, f"peak RSS {int(peak) / 2**20:.0f} MiB"
