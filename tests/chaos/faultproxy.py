"""A TCP fault proxy of our own (asyncio), put between a service and a backend to inject failures.

Modes, switchable at run time (``proxy.set(mode)``), applied to new connections and to those open:

* ``pass``: bytes flow untouched;
* ``latency``: each chunk, either way, waits ``latency`` seconds before it is forwarded;
* ``drop``: new connections are accepted and closed at once (FIN); open ones are closed;
* ``reset``: new connections are reset (RST); open ones are reset too;
* ``blackhole``: new connections are accepted and never answered; open ones stop forwarding (bytes
  vanish, nothing is closed: the peer learns only through its own timeouts).

``fail_next(n, how)`` spoils only the next ``n`` connections (``how`` = ``reset``, or ``503``: an HTTP
answer ``503 SlowDown`` read after the request head, then close), for retry tests. The proxy sets
``Connection: close`` on nothing: a client's kept-alive connection keeps flowing once the count is used up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Literal

__all__ = ["MODES", "FaultProxy", "Mode", "running_proxy"]

Mode = Literal["pass", "latency", "drop", "reset", "blackhole"]
MODES: tuple[Mode, ...] = ("pass", "latency", "drop", "reset", "blackhole")
_CHUNK = 64 * 1024
_SLOW_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.upstream = upstream

    def close(self, *, reset: bool) -> None:
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.connections = 0  # accepted so far
        self._fail_next = 0
        self._fail_how = "reset"
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.close(reset=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def set(self, mode: Mode, *, latency: float = 0.0) -> None:
        self.mode, self.latency = mode, latency
        if mode in ("drop", "reset"):
            for pair in list(self._pairs):
                pair.close(reset=mode == "reset")

    def fail_next(self, count: int, how: Literal["reset", "503"] = "reset") -> None:
        self._fail_next, self._fail_how = count, how

    # --- connections ------------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._handle(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): asyncio's server callback would log a cancelled handler as an error
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._fail_next > 0:
            self._fail_next -= 1
            if self._fail_how == "503":
                head = await reader.readuntil(b"\r\n\r\n")
                body = b"" if head.startswith(b"HEAD ") else _SLOW_DOWN
                writer.write(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                writer.close()
            else:
                _reset(writer)
            return
        if self.mode == "drop":
            writer.close()
            return
        if self.mode == "reset":
            _reset(writer)
            return
        if self.mode == "blackhole":
            while await reader.read(_CHUNK):
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(_CHUNK):
                if self.mode == "latency" and self.latency:
                    await asyncio.sleep(self.latency)
                if self.mode == "blackhole":
                    continue  # swallowed
                writer.write(chunk)
                await writer.drain()
        finally:
            if not writer.is_closing():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()


@contextlib.asynccontextmanager
async def running_proxy(upstream: str, *, port: int = 0) -> AsyncIterator[FaultProxy]:
    """A started proxy in front of ``upstream`` (``host:port``), stopped on exit."""
    host, _, upstream_port = upstream.rpartition(":")
    proxy = FaultProxy(host or "127.0.0.1", int(upstream_port), port=port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
