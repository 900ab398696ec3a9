"""How the services' uvicorn treats sockets (``chat_core.server.uvicorn_options``, what ``serve`` runs)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from litestar import Litestar, WebSocket, websocket

from chat_core.server import uvicorn_options
from chat_core.settings import Settings
from tests import harness
from tests.conftest import make_settings


@websocket("/ws")
async def echo(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_text(await socket.receive_text())


@contextlib.asynccontextmanager
async def _serving(settings: Settings) -> AsyncIterator[int]:
    port = harness.free_port()
    config = uvicorn.Config(
        Litestar([echo], logging_config=None), host="127.0.0.1", port=port, **uvicorn_options(settings)
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        running.should_exit = True
        await task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    async with _serving(make_settings(tmp_path)) as port:
        yield port


async def _handshake(
    port: int, extensions: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extensions}\r\n"
        ).encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().lower()
    return reader, writer, head


async def test_a_browsers_permessage_deflate_offer_is_declined(server: int) -> None:
    """Each socket would otherwise keep a zlib compressor and decompressor for as long as it is open."""
    _reader, writer, head = await _handshake(
        server, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    )
    writer.close()
    assert head.startswith("http/1.1 101"), head
    assert "sec-websocket-extensions" not in head, head


def test_keepalive_pings_follow_the_setting(tmp_path: Path) -> None:
    assert uvicorn_options(make_settings(tmp_path))["ws_ping_interval"] == 20.0
    settings = make_settings(tmp_path, {"WS_PING_INTERVAL_SECONDS": "45"})
    assert uvicorn_options(settings)["ws_ping_interval"] == 45.0


async def test_an_idle_socket_is_pinged_every_ws_ping_interval_seconds(tmp_path: Path) -> None:
    """What keeps an idle socket open through the load balancer: a ping frame (opcode 9) from the server."""
    async with _serving(make_settings(tmp_path, {"WS_PING_INTERVAL_SECONDS": "0.3"})) as port:
        reader, writer, head = await _handshake(port)
        assert head.startswith("http/1.1 101"), head
        loop = asyncio.get_running_loop()
        opened = loop.time()
        first = await asyncio.wait_for(reader.readexactly(2), 5)
        waited = loop.time() - opened
        writer.close()
    assert first[0] == 0x89, first  # FIN + ping
    assert 0.2 <= waited < 3, waited
