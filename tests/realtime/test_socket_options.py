"""How the services' uvicorn treats sockets (``chat_core.server.uvicorn_options``, what ``serve`` runs)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from litestar import Litestar, WebSocket, websocket

from chat_core.server import uvicorn_options
from tests import harness
from tests.conftest import make_settings


@websocket("/ws")
async def echo(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_text(await socket.receive_text())


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    port = harness.free_port()
    config = uvicorn.Config(
        Litestar([echo], logging_config=None),
        host="127.0.0.1",
        port=port,
        **uvicorn_options(make_settings(tmp_path)),
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


async def test_a_browsers_permessage_deflate_offer_is_declined(server: int) -> None:
    """Each socket would otherwise keep a zlib compressor and decompressor for as long as it is open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().lower()
    writer.close()
    assert head.startswith("http/1.1 101"), head
    assert "sec-websocket-extensions" not in head, head
