"""Send -> ``message.updated`` latency of the media pipeline, at a fixed rate, on the embedded stack.

    uv run python -m bench.media_pipeline [--rate 2] [--seconds 20] [--megapixels 2]

The all-in-one app (``serve all``: local disk, SQLite, in-process bus, SQLite media queue, the media
processor's worker pool sized to the machine) runs under uvicorn in this process. A client does what a
phone does, at a fixed rate (open loop: a slow answer does not slow the next send): upload URL, PUT of
a JPEG photo held upright (EXIF orientation 6, so it must be turned), send; the clock runs from the
send's request to the ``message.updated`` event of that message on the bus. Prints p50/p99 of that,
and of the send alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn

from bench import guard
from bench.guard import NEVER_REFUSING_LIMITS, BenchFailure
from chat_core.auth import mint_token
from chat_core.composition import Composition
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import decode_envelope
from chat_core.settings import load_settings
from chat_management import all as all_in_one
from tests.harness import free_port
from tests.media import corpus

SECRET = "bench-secret-0123456789abcdef0123456789"  # noqa: S105 - a throwaway dev secret


@contextlib.asynccontextmanager
async def running_stack(data_dir: str) -> AsyncIterator[tuple[str, Composition]]:
    port = free_port()
    settings = load_settings(
        {
            "AUTH_JWT_SECRET": SECRET,
            "DATA_DIR": data_dir,
            "PORT": str(port),
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "WARNING",
            **NEVER_REFUSING_LIMITS,
        }
    )
    backends = Composition(settings)
    app = all_in_one.create_app(settings, backends)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", backends
    finally:
        server.should_exit = True
        await task


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run(rate: float, seconds: float, megapixels: int) -> None:
    photo = corpus.large_jpeg(megapixels, orientation=6)
    token = mint_token(SECRET, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory() as data_dir:
        async with (
            running_stack(data_dir) as (base, backends),
            httpx.AsyncClient(base_url=base, timeout=60) as http,
        ):
            created = await http.post("/conversations", json={"participantIds": ["bob"]}, headers=headers)
            cid = created.json()["conversationId"]
            sent_at: dict[str, float] = {}
            updated: dict[str, float] = {}
            done = asyncio.Event()
            first = asyncio.Event()

            def on_event(_channel: str, payload: bytes) -> None:
                envelope = decode_envelope(payload)
                if envelope and envelope.type == "message.updated" and envelope.message:
                    updated[envelope.message.message_id] = time.perf_counter()
                    first.set()
                    if len(updated) == total:
                        done.set()

            await backends.event_bus.subscribe([conversation_channel(cid)], on_event)
            total = int(rate * seconds)
            send_seconds: list[float] = []
            failures: list[str] = []
            pending: dict[int, float] = {}

            async def one(index: int) -> None:
                issued = await http.post(
                    f"/conversations/{cid}/images/upload_url",
                    json={"content_type": "image/jpeg"},
                    headers=headers,
                )
                grant = issued.json()
                await http.put(grant["upload_url"], content=photo, headers={"Content-Type": "image/jpeg"})
                started = time.perf_counter()
                pending[index] = started
                response = await http.post(
                    f"/conversations/{cid}/messages",
                    json={
                        "messageType": "image",
                        "metadata": {"object_key": grant["object_key"], "content_type": "image/jpeg"},
                    },
                    headers=headers,
                )
                send_seconds.append(time.perf_counter() - started)
                if response.status_code != 201:
                    failures.append(response.text)
                    return
                sent_at[response.json()["messageId"]] = started

            # Warm-up: the worker pool has started and the first image is through before the clock runs.
            await one(-1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first.wait(), 60)
            sent_at.clear()
            updated.clear()
            send_seconds.clear()
            tasks = []
            begin = time.perf_counter()
            for index in range(total):
                await asyncio.sleep(max(0.0, begin + index / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(index)))
            await asyncio.gather(*tasks)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 120)
    latencies = [updated[m] - t for m, t in sent_at.items() if m in updated]
    if failures:
        raise BenchFailure(f"image sends: {len(failures)} of {total} not 201, first: {failures[0][:200]}")
    if len(latencies) < total:
        raise BenchFailure(f"image sends: {total - len(latencies)} of {total} never reached message.updated")
    print(
        f"send -> message.updated, embedded stack, {rate:g}/s for {seconds:g} s, "
        f"{megapixels} MP JPEG (turned)"
    )
    print(
        f"  cpus {len(os.sched_getaffinity(0))}, sends {total}, failed sends {len(failures)}, "
        f"updated {len(latencies)}"
    )
    if latencies:
        print(
            f"  send -> updated  p50 {percentile(latencies, 0.5) * 1000:7.0f} ms"
            f"   p99 {percentile(latencies, 0.99) * 1000:7.0f} ms"
            f"   mean {statistics.mean(latencies) * 1000:7.0f} ms"
        )
    if send_seconds:
        print(
            f"  send (201)       p50 {percentile(send_seconds, 0.5) * 1000:7.0f} ms"
            f"   p99 {percentile(send_seconds, 0.99) * 1000:7.0f} ms"
        )


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=2.0, help="sends per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--megapixels", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s at 2/s")
    options = parser.parse_args()
    if options.quick:
        options.seconds = 3.0
    asyncio.run(run(options.rate, options.seconds, options.megapixels))


if __name__ == "__main__":
    main()
