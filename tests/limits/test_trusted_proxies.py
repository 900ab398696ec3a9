"""Behind a proxy, a real server (``chat-management serve``: uvicorn) sees the client only via a trusted one.

``TRUSTED_PROXIES`` is what uvicorn is given (its ``FORWARDED_ALLOW_IPS`` environment variable is not read)
and what the per-IP limits use: the access log and the limits name the address in ``X-Forwarded-For`` when
the peer is a trusted proxy, and the peer itself otherwise (a client cannot pick the address it is counted
against). Peers are told apart by their source address on the loopback network: 127.0.0.1 is the trusted
proxy, 127.0.0.2 anyone else.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests import harness
from tests.conftest import TEST_SECRET

PROXY, STRANGER = "127.0.0.1", "127.0.0.2"


@dataclass
class Server:
    url: str
    log: Path

    def requests(self) -> list[dict[str, Any]]:
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [event for event in map(json.loads, lines) if event.get("event") == "request"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    port = harness.free_port()
    log = tmp_path / "message.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REDIS_", "FIRESTORE_"))},
        "AUTH_JWT_SECRET": TEST_SECRET,
        "DATA_DIR": str(tmp_path),
        "HOST": "127.0.0.1",  # reached from both loopback addresses
        "TRUSTED_PROXIES": "127.0.0.0/31",  # a CIDR, as a cluster's is: 127.0.0.1 in, 127.0.0.2 out
        "FORWARDED_ALLOW_IPS": "*",  # what the chart used to set: uvicorn must not be told by it
        "RATE_LIMIT_SOCKET_CONNECTS": "2/minute",
        "ACCESS_LOG": "true",
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat_management", "serve", "message", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                assert process.poll() is None, log.read_text()
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield Server(url, log)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)


def _from(source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source))


async def _connects(server: Server, source: str, forwarded_for: str) -> int:
    """The HTTP status of a socket connect without a token (101 when it got through to the 4401)."""
    url = server.url.replace("http://", "ws://") + "/ws"
    try:
        async with connect(
            url, additional_headers={"X-Forwarded-For": forwarded_for}, local_addr=(source, 0)
        ) as socket:
            await socket.wait_closed()
    except InvalidStatus as refused:
        return refused.response.status_code
    return 101


async def test_the_access_log_names_the_forwarded_client_only_behind_a_trusted_proxy(server: Server) -> None:
    async with _from(PROXY) as proxy, _from(STRANGER) as stranger:
        await proxy.get(f"{server.url}/conversations", headers={"X-Forwarded-For": "198.51.100.9"})
        await stranger.get(f"{server.url}/conversations", headers={"X-Forwarded-For": "198.51.100.10"})
    await asyncio.sleep(0.2)

    logged = [(event["route"], event["client_ip"]) for event in server.requests()]

    assert ("/conversations", "198.51.100.9") in logged  # through the proxy: the client it names
    assert ("/conversations", STRANGER) in logged  # a forged header from anyone else: ignored
    assert all(client != "198.51.100.10" for _, client in logged)


async def test_per_ip_limits_count_the_forwarded_client_only_behind_a_trusted_proxy(server: Server) -> None:
    statuses: Callable[[str, list[str]], Any] = lambda source, clients: asyncio.gather(  # noqa: E731
        *(_connects(server, source, client) for client in clients)
    )
    # A stranger naming a new client each time is still one address: its third connect is refused.
    stranger = [await _connects(server, STRANGER, f"203.0.113.{n}") for n in (1, 2, 3)]
    assert stranger == [101, 101, 429]
    # Through the proxy, three clients are three budgets; one client's third connect is refused.
    assert await statuses(PROXY, ["198.51.100.1", "198.51.100.2", "198.51.100.3"]) == [101, 101, 101]
    again = [await _connects(server, PROXY, "198.51.100.1") for _ in range(2)]
    assert again == [101, 429]
