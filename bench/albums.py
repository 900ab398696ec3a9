"""Albums on the embedded stack: send -> all ten images ready, and the send's own latency, 1 image vs 10.

    uv run python -m bench.albums [--iterations 5] [--images 10] [--quick]

The all-in-one app (``serve all``: local disk, SQLite, in-process bus, SQLite media queue, the media
processor's worker pool sized to the machine) runs under uvicorn in this process
(``bench.media_pipeline.running_stack``). Each iteration, as a phone would: ten 12 MP photos (4000x3000
JPEGs, generated with Pillow, photo-like: a gradient with noise) each get an upload URL and a PUT (not
timed), then one album send; the clock runs from the send's request to the last of the album's ten
``message.updated`` events on the bus (each image has its own media job and event, naming its
``index``). Then, for the send's own latency, one single-image send of the same photo, waited out too, so
that neither send competes with the other's processing. Iterations run one after the other.

Prints p50/p99 (with few iterations p99 is the slowest) of: send -> first image ready, send -> all
ready, and the 201 of a 1-image send against a 10-image one (ten objects checked side by side: one
ranged read each, in parallel).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time
from collections import defaultdict

import httpx
from PIL import Image

from bench import guard
from bench.guard import BenchFailure
from bench.media_pipeline import SECRET, percentile, running_stack
from chat_core.auth import mint_token
from chat_core.realtime import conversation_channel
from chat_core.realtime.events import decode_envelope

WIDTH, HEIGHT = 4000, 3000  # 12 MP, a phone camera's


def photo(seed: int) -> bytes:
    """A photo-like 12 MP JPEG (noise compresses like detail, not like a flat colour)."""
    base = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    noise = Image.effect_noise((WIDTH, HEIGHT), 30 + seed)
    image = Image.merge("RGB", (base, noise, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:7.0f} ms"


async def run(iterations: int, count: int) -> None:
    photos = [photo(i) for i in range(count)]
    headers = {"Authorization": f"Bearer {mint_token(SECRET, 'alice')}"}
    first_ready: list[float] = []
    all_ready: list[float] = []
    album_sends: list[float] = []
    single_sends: list[float] = []
    with tempfile.TemporaryDirectory() as data_dir:
        async with (
            running_stack(data_dir) as (base, backends),
            httpx.AsyncClient(base_url=base, timeout=120) as http,
        ):
            created = await http.post("/conversations", json={"participantIds": ["bob"]}, headers=headers)
            cid = created.json()["conversationId"]
            ready_at: dict[str, list[float]] = defaultdict(list)
            finished: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
            expected: dict[str, int] = {}

            def on_event(_channel: str, payload: bytes) -> None:
                envelope = decode_envelope(payload)
                if envelope is None or envelope.type != "message.updated" or envelope.message is None:
                    return
                message_id = envelope.message.message_id
                ready_at[message_id].append(time.perf_counter())
                if len(ready_at[message_id]) >= expected.get(message_id, 1):
                    finished[message_id].set()

            await backends.event_bus.subscribe([conversation_channel(cid)], on_event)

            async def upload(data: bytes) -> str:
                grant = (
                    await http.post(
                        f"/conversations/{cid}/images/upload_url",
                        json={"content_type": "image/jpeg"},
                        headers=headers,
                    )
                ).json()
                put = await http.put(
                    grant["upload_url"], content=data, headers={"Content-Type": "image/jpeg"}
                )
                if put.status_code != 200:
                    raise BenchFailure(f"upload: {put.status_code} {put.text[:200]}")
                return str(grant["object_key"])

            async def send(object_keys: list[str]) -> tuple[str, float, float]:
                """(message id, send start, send seconds), once every image is ready."""
                if len(object_keys) == 1:
                    metadata: dict[str, object] = {"object_key": object_keys[0], "content_type": "image/jpeg"}
                else:
                    metadata = {
                        "images": [{"object_key": k, "content_type": "image/jpeg"} for k in object_keys]
                    }
                started = time.perf_counter()
                response = await http.post(
                    f"/conversations/{cid}/messages",
                    json={"messageType": "image", "metadata": metadata},
                    headers=headers,
                )
                took = time.perf_counter() - started
                if response.status_code != 201:
                    raise BenchFailure(f"send: {response.status_code} {response.text[:300]}")
                message_id = str(response.json()["messageId"])
                expected[message_id] = len(object_keys)
                if len(ready_at[message_id]) >= len(object_keys):
                    finished[message_id].set()
                try:
                    await asyncio.wait_for(finished[message_id].wait(), 300)
                except TimeoutError:
                    raise BenchFailure(f"{len(ready_at[message_id])} of {len(object_keys)} ready") from None
                return message_id, started, took

            # Warm-up: the worker pool has started and an image is through before the clock runs.
            await send([await upload(photos[0])])
            for _ in range(iterations):
                keys = [await upload(data) for data in photos]
                message_id, started, took = await send(keys)
                album_sends.append(took)
                first_ready.append(min(ready_at[message_id]) - started)
                all_ready.append(max(ready_at[message_id]) - started)
                _, _, took = await send([await upload(photos[0])])
                single_sends.append(took)
    megabytes = statistics.mean(len(data) for data in photos) / 1e6
    print(
        f"albums, embedded stack: {iterations} albums of {count} x {WIDTH}x{HEIGHT} JPEG "
        f"(~{megabytes:.1f} MB each), cpus {len(os.sched_getaffinity(0))}"
    )
    print(f"  send -> first image ready   p50 {_ms(first_ready, 0.5)}   p99 {_ms(first_ready, 0.99)}")
    print(f"  send -> all {count} ready       p50 {_ms(all_ready, 0.5)}   p99 {_ms(all_ready, 0.99)}")
    print(f"  send (201), 1 image         p50 {_ms(single_sends, 0.5)}   p99 {_ms(single_sends, 0.99)}")
    print(f"  send (201), {count} images       p50 {_ms(album_sends, 0.5)}   p99 {_ms(album_sends, 0.99)}")


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--images", type=int, default=10, help="images per album (2..10)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 albums")
    options = parser.parse_args()
    if options.quick:
        options.iterations = 2
    asyncio.run(run(options.iterations, options.images))


if __name__ == "__main__":
    main()
