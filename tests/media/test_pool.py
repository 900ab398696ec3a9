"""The worker pool: results from other processes, and jobs that run too long, use too much or crash."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.spawn
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import media_processor.app
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from media_processor.pool import MediaProcessor, PoolSettings, PoolUnavailable
from media_processor.transforms import Reason, Rejected, Sanitized
from media_processor.worker import limits_from, pool_settings_from
from tests.conftest import make_settings
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


async def test_an_image_limit_set_in_the_environment_reaches_the_worker_processes(tmp_path: Path) -> None:
    # The service's path: settings from the environment -> limits_from -> the spawned decoder processes.
    settings = make_settings(tmp_path, {"MAX_ANIMATION_PIXELS": "500000", "MEDIA_WORKERS": "1"})
    async with MediaProcessor(limits_from(settings), pool_settings_from(settings)) as media:
        result = await media.process(corpus.animated_gif(5, (480, 360)), "image/gif")  # 864,000 pixels
    assert isinstance(result, Rejected)
    assert result.reason == Reason.TOO_MANY_PIXELS


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


async def test_a_job_stopped_mid_decode_gives_its_slot_back_and_the_next_job_runs(
    processor: MediaProcessor,
) -> None:
    # What a media job's bound (MediaWorker, longest_job_seconds) does to a decode still running: cancel
    # it. Its worker is killed (its state is unknown), the slot goes back, the next job starts a worker.
    [before] = processor.worker_pids
    image = corpus.large_jpeg(30)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(processor.process(image, "image/jpeg"), 0.3)
    assert before not in processor.worker_pids
    health = processor.health()
    assert (health.size, health.problem()) == (1, None)  # readiness stays ok: a worker can be started
    result = await asyncio.wait_for(processor.process(corpus.jpeg_oriented(1), "image/jpeg"), 30)
    assert isinstance(result, Sanitized), result
    assert len(processor.worker_pids) == 1
    assert processor.health().alive == 1


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


async def _kill_mid_job(media: MediaProcessor) -> Rejected | Sanitized:
    [worker] = media.worker_pids
    task = asyncio.ensure_future(media.process(corpus.large_jpeg(30), "image/jpeg"))
    await asyncio.sleep(0.3)  # the job is running
    os.kill(worker, signal.SIGKILL)
    return await task


async def test_a_worker_that_cannot_be_started_again_never_shrinks_the_pool() -> None:
    # Fault: after a worker is killed, starting its replacement fails (here: the interpreter cannot be
    # executed; on a node, out of memory or processes). The slot must come back, not leak.
    python = multiprocessing.spawn.get_executable()
    async with MediaProcessor(pool=PoolSettings(workers=1, timeout_seconds=60)) as media:
        try:
            multiprocessing.set_executable("/nonexistent/python")
            killed = await _kill_mid_job(media)
            assert isinstance(killed, Rejected)
            assert killed.reason is Reason.MEMORY  # what a SIGKILL looks like
            health = media.health()
            assert (health.size, health.alive) == (1, 0)
            assert health.problem() is not None
            # The next job is told at once (the queue retries it), instead of waiting for a slot forever.
            with pytest.raises(PoolUnavailable):
                await asyncio.wait_for(media.process(corpus.jpeg_oriented(1), "image/jpeg"), 30)
        finally:
            multiprocessing.set_executable(python)
        # Once a worker can be started again, the next job starts one and runs.
        result = await asyncio.wait_for(media.process(corpus.jpeg_oriented(1), "image/jpeg"), 30)
        assert isinstance(result, Sanitized)
        assert media.health().problem() is None
        assert len(media.worker_pids) == 1


async def test_a_worker_killed_while_idle_is_replaced_before_it_gets_a_job(processor: MediaProcessor) -> None:
    [worker] = processor.worker_pids
    os.kill(worker, signal.SIGKILL)
    await asyncio.sleep(0.2)
    result = await processor.process(corpus.jpeg_oriented(1), "image/jpeg")
    assert isinstance(result, Sanitized), result  # not worker_crashed: the image was never at fault
    assert processor.worker_pids != [worker]


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
        from media_processor.pool import MediaProcessor, PoolSettings, PoolUnavailable

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


async def test_the_media_processor_reports_its_pool_in_readyz(tmp_path: Path, client_for: Any) -> None:
    # ``media_pool`` is one of its checks; a failing one (a pool short of workers it cannot start) is a 503.
    settings = make_settings(tmp_path)
    backends = Composition(settings)
    part = media_processor.app.build(settings, media_processor.app.ports(backends))
    assert set(part.readiness) == {"media_pool"}
    client = await client_for(media_processor.app.create_app(settings, backends))
    ready = await client.get("/readyz")
    assert ready.json()["checks"]["media_pool"] == "ok", ready.text

    async def short_of_workers() -> None:
        raise PoolUnavailable("0 of 1 image workers alive; starting one failed: OSError(...)")

    failing = ServiceParts(component="media-processor", readiness={"media_pool": short_of_workers})
    client = await client_for(
        create_service_app(settings, Composition(settings), [failing], component="m", title="m")
    )
    down = await client.get("/readyz")
    assert down.status_code == 503
    assert "starting one failed" in down.json()["checks"]["media_pool"]
