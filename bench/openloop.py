"""A lean open-loop HTTP/1.1 load generator: requests start on a fixed schedule, whatever came back.

httpx spends milliseconds of CPU per request, which on a 2-core machine shared with the server makes the
client the bottleneck at a few hundred requests per second. This speaks just enough HTTP/1.1 over a pool
of keep-alive connections (uvloop) to cost tens of microseconds. Latency counts from each request's
scheduled start, so a slow server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

__all__ = ["OpenLoopResult", "run_open_loop"]


@dataclass
class OpenLoopResult:
    latencies: list[float]  # seconds, from the scheduled start, sorted
    statuses: dict[int, int]
    elapsed: float

    def percentile(self, p: float) -> float:
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * p))]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status


def _raw_request(method: str, url: str, headers: dict[str, str], body: bytes) -> bytes:
    split = urlsplit(url)
    target = split.path + (f"?{split.query}" if split.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {split.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _open_loop(
    url: str, bodies: Sequence[bytes], headers: dict[str, str], rate: float, connections: int
) -> OpenLoopResult:
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Connection(*await asyncio.open_connection(host, port)))
    requests = [_raw_request("POST", url, headers, body) for body in bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    start = time.perf_counter() + 0.05

    async def one(index: int) -> None:
        scheduled = start + index / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        connection = await pool.get()
        try:
            status = await connection.request(requests[index])
        finally:
            pool.put_nowait(connection)
        latencies.append(time.perf_counter() - scheduled)
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(len(requests))))
    elapsed = time.perf_counter() - start
    while not pool.empty():
        writer = pool.get_nowait().writer
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    latencies.sort()
    return OpenLoopResult(latencies=latencies, statuses=statuses, elapsed=elapsed)


def run_open_loop(
    url: str, bodies: Sequence[bytes], headers: dict[str, str], *, rate: float, connections: int = 64
) -> OpenLoopResult:
    """POST each body to ``url``, the i-th at ``i / rate`` seconds, over ``connections`` connections."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_open_loop(url, bodies, headers, rate, connections))
