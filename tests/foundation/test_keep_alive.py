"""Idle HTTP/1.1 connections outlive the load balancer's (``HTTP_KEEP_ALIVE_SECONDS``, what ``serve`` runs).

uvicorn's own default is 5 s, below every cloud balancer's idle timeout (60 s): the server would close a
connection the balancer is about to reuse, and that request becomes a 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from litestar import Litestar, get

from chat_core.server import uvicorn_options
from tests import harness
from tests.conftest import make_settings


@get("/ping", sync_to_thread=False)
def ping() -> str:
    return "pong"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    port = harness.free_port()
    settings = make_settings(tmp_path, {"HTTP_KEEP_ALIVE_SECONDS": "1"})
    config = uvicorn.Config(
        Litestar([ping], logging_config=None), host="127.0.0.1", port=port, **uvicorn_options(settings)
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


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> bytes:
    writer.write(f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return head + await asyncio.wait_for(reader.readexactly(4), 5)


async def test_an_idle_connection_is_kept_for_the_configured_time_then_closed(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        assert (await _ask(reader, writer, server)).endswith(b"pong")
        await asyncio.sleep(0.3)  # idle, well within the setting: the same connection answers again
        assert (await _ask(reader, writer, server)).endswith(b"pong")
        # Past it, the server closes the connection itself.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


def test_the_default_outlives_a_cloud_load_balancers_idle_timeout(tmp_path: Path) -> None:
    options = uvicorn_options(make_settings(tmp_path))
    assert options["timeout_keep_alive"] > 60  # ALB's and GKE's default idle timeout
