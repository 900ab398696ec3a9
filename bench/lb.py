"""A small round-robin TCP load balancer (one process, uvloop): each new connection goes to the next backend.

    python -m bench.lb --port 8330 --backends 8320,8321

Used by ``bench.pods`` in front of several message-service processes, as an L4 balancer would be (an
HTTP request per connection spreads requests, a WebSocket stays on the pod it was given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools

import uvloop


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, backends: list[int]) -> None:
    targets = itertools.cycle(backends)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", next(targets))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backends", required=True)
    args = parser.parse_args()
    from bench.rt import raise_file_limit

    raise_file_limit()
    uvloop.run(serve(args.port, [int(p) for p in args.backends.split(",")]))


if __name__ == "__main__":
    main()
