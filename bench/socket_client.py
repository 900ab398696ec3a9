"""The socket side of the real-time benchmarks, in its own process (``bench.rt.ClientProcess`` drives it).

Commands (one JSON object a line on stdin, one JSON answer a line on stdout):

* ``open``: ``{host, ports, users, concurrency}``: a socket per user (round-robin over ``ports``), each
  counted once the server's ``session.ready`` arrived;
* ``fanout``: ``{url, conversation, sender, expected, samples}``: one message at a time, each timed from
  just before its POST to its arrival on the ``expected``-th socket;
* ``load``: ``{urls, sends: [[conversation, sender]...], rate, expected}``: open loop at ``rate`` messages
  per second over new connections (so a round-robin balancer spreads them), then waits for every arrival;
* ``quit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench.rt import Arrivals, SocketClient, open_sockets, raise_file_limit, token


class Client:
    def __init__(self) -> None:
        self.sockets: list[SocketClient] = []
        self.arrivals = Arrivals()
        self.seq = 0

    async def open(self, host: str, ports: list[int], users: list[str], concurrency: int) -> dict[str, Any]:
        started = time.perf_counter()
        opened, failed = await open_sockets(host, ports, users, self.arrivals, concurrency=concurrency)
        self.sockets.extend(opened)
        return {"opened": len(opened), "failed": failed, "seconds": time.perf_counter() - started}

    def _marker(self) -> str:
        self.seq += 1
        return f"m{self.seq:08d}x"

    async def _post(self, url: str, conversation: str, sender: str, marker: str) -> int:
        split = urlsplit(url)
        body = json.dumps({"messageType": "text", "content": marker}).encode()
        request = (
            f"POST /conversations/{conversation}/messages HTTP/1.1\r\nHost: {split.netloc}\r\n"
            f"Authorization: Bearer {token(sender)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        reader, writer = await asyncio.open_connection(split.hostname, split.port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            return int(head[9:12])
        finally:
            writer.close()

    async def fanout(
        self, url: str, conversation: str, sender: str, expected: int, samples: int
    ) -> dict[str, Any]:
        latencies: list[float] = []
        lost = 0
        for _ in range(samples):
            marker = self._marker()
            self.arrivals.expect(marker.encode(), expected)
            started = time.perf_counter()
            status = await self._post(url, conversation, sender, marker)
            if status != 201:
                raise RuntimeError(f"send answered {status}")
            try:
                await asyncio.wait_for(self.arrivals.done.wait(), 10)
            except TimeoutError:
                lost += expected - len(self.arrivals.times)
                continue
            latencies.append(self.arrivals.times[-1] - started)
        self.arrivals.expect(b"", 0)
        return {"latencies": sorted(latencies), "lost": lost}

    async def load(
        self, urls: list[str], sends: list[list[str]], rate: float, expected: int
    ) -> dict[str, Any]:
        """Open loop: the i-th send at i/rate s, over new connections (the balancer spreads them)."""
        marker = self._marker()
        self.arrivals.expect(marker.encode(), expected)
        start = time.perf_counter() + 0.05
        statuses: dict[int, int] = {}

        async def one(index: int, conversation: str, sender: str) -> None:
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            status = await self._post(urls[index % len(urls)], conversation, sender, marker)
            statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(i, c, s) for i, (c, s) in enumerate(sends)))
        sent_in = time.perf_counter() - start
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.arrivals.done.wait(), 30)
        delivered = len(self.arrivals.times)
        drained_in = time.perf_counter() - start
        self.arrivals.expect(b"", 0)
        return {
            "statuses": {str(k): v for k, v in statuses.items()},
            "delivered": delivered,
            "sent_seconds": sent_in,
            "drained_seconds": drained_in,
        }


async def main() -> None:
    raise_file_limit()
    client = Client()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        op = command.pop("op")
        try:
            if op == "quit":
                answer: dict[str, Any] = {"ok": True}
            elif op == "open":
                answer = await client.open(**command)
            elif op == "fanout":
                answer = await client.fanout(**command)
            elif op == "load":
                answer = await client.load(**command)
            else:
                answer = {"error": f"unknown op {op}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if op == "quit":
            break
    for socket in client.sockets:
        socket.close()


if __name__ == "__main__":
    uvloop.run(main())
