"""What the real-time benchmarks share: a lean WebSocket client, a seeded message service, /proc readings.

The client (``SocketClient``) is one ``asyncio.Protocol`` per socket, no task per socket: an HTTP/1.1
upgrade, then just enough RFC 6455 to read text frames and answer pings (masked, as a client must). It
runs in its own process (``python -m bench.socket_client``), so the server's memory and CPU are its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import chat_devstack as devstack
from bench.guard import NEVER_REFUSING_LIMITS, BenchFailure
from chat_core.auth import mint_token
from chat_core.chatstore import Conversation
from chat_core.composition import Composition
from chat_core.settings import load_settings

SECRET = "bench-secret-0123456789abcdef-0123456789"  # noqa: S105 - a throwaway dev secret
PORTS = range(8320, 8340)  # hand-run servers of this benchmark


def raise_file_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def token(user_id: str) -> str:
    return mint_token(SECRET, user_id, ttl_seconds=6 * 3600)


# --- /proc -----------------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- the message service -----------------------------------------------------------------------------
def service_env(data_dir: Path, redis_url: str, redis_mode: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FIRESTORE_", "REDIS_"))}
    return {
        **inherited,
        "AUTH_JWT_SECRET": SECRET,
        "OBJECT_STORE": "local",
        "MESSAGE_STORE": "sqlite",
        "NOTIFICATION_QUEUE": "sqlite",
        "EVENT_BUS": "redis",
        "REDIS_URL": redis_url,
        "REDIS_MODE": redis_mode,
        "DATA_DIR": str(data_dir),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        # One client process sends for every user at rates no person reaches: the load generator's limits.
        **NEVER_REFUSING_LIMITS,
    }


async def seed(env: dict[str, str], groups: Mapping[str, Sequence[str]]) -> None:
    """Conversations straight into the store (the API caps a group at 500 members; this measures past it)."""
    now = dt.datetime.now(dt.UTC)
    backends = Composition(load_settings(env))
    store = backends.conversations
    async with backends:
        for conversation_id, members in groups.items():
            await store.create_conversation(
                Conversation(
                    conversation_id=conversation_id,
                    participants=tuple(members),
                    name=None,
                    created_at=now,
                    updated_at=now,
                )
            )


@contextlib.contextmanager
def message_services(
    env: dict[str, str], count: int, workdir: Path
) -> Iterator[list[devstack.ServiceProcess]]:
    services = [
        devstack.ServiceProcess("message", PORTS[index], workdir / f"message-{index}.log")
        for index in range(count)
    ]
    try:
        for service in services:
            service.start(env)
        for service in services:
            service.wait_ready(90)
        yield services
    finally:
        for service in services:
            service.stop()


@contextlib.contextmanager
def redis_cluster() -> Iterator[devstack.Backend]:
    backend = devstack.start_local_redis_cluster(3)
    try:
        yield backend
    finally:
        backend.stop()


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- the client process ------------------------------------------------------------------------------
class ClientProcess:
    """``python -m bench.socket_client``: JSON commands on its stdin, one JSON answer line each."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.socket_client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the socket client died ({self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchFailure(f"socket client: {answer['error']}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        devstack.kill_group(self.process)  # type: ignore[arg-type]


# --- the WebSocket protocol --------------------------------------------------------------------------
@dataclass
class Arrivals:
    """Which sockets saw the current marker, and when (perf_counter)."""

    marker: bytes = b""
    times: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def expect(self, marker: bytes, count: int) -> None:
        self.marker, self.expected, self.times = marker, count, []
        self.done = asyncio.Event()

    def saw(self) -> None:
        self.times.append(time.perf_counter())
        if len(self.times) >= self.expected:
            self.done.set()


class SocketClient(asyncio.Protocol):
    def __init__(self, host: str, port: int, user_id: str, arrivals: Arrivals) -> None:
        self.request = (
            f"GET /ws?access_token={token(user_id)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            # What browsers offer: a server that accepted would keep zlib state per socket (and this
            # client, which does not speak it, fails the run rather than measure without it).
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
        self.arrivals = arrivals
        self.buffer = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.frames = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not an asyncio.Transport
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before session.ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {bytes(self.buffer[:40])!r}")
                return
            if b"sec-websocket-extensions" in bytes(self.buffer[:end]).lower():
                self._fail("the server accepted permessage-deflate, which this client does not speak")
                return
            del self.buffer[: end + 4]
            self.upgraded = True
        while (frame := self._next_frame()) is not None:
            opcode, payload = frame
            if opcode == 1:
                self.frames += 1
                if not self.ready.done() and b"session.ready" in payload:
                    self.ready.set_result(None)
                elif self.arrivals.marker and self.arrivals.marker in payload:
                    self.arrivals.saw()
            elif opcode == 9:
                self.send(10, payload)
            elif opcode == 8:
                self._fail(f"closed by the server: {payload[:2].hex()} {payload[2:60]!r}")

    def _next_frame(self) -> tuple[int, bytes] | None:
        buffer = self.buffer
        if len(buffer) < 2:
            return None
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return None
            (length,), offset = struct.unpack_from("!H", buffer, 2), 4
        elif length == 127:
            if len(buffer) < 10:
                return None
            (length,), offset = struct.unpack_from("!Q", buffer, 2), 10
        if len(buffer) < offset + length:
            return None
        payload = bytes(buffer[offset : offset + length])
        del buffer[: offset + length]
        return opcode, payload

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header = bytes([0x80 | opcode, 0x80 | len(payload)]) if len(payload) < 126 else b""
        self.transport.write(header + mask + masked)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_sockets(
    host: str,
    ports: Sequence[int],
    users: Sequence[str],
    arrivals: Arrivals,
    *,
    concurrency: int = 64,
    on_open: Callable[[SocketClient], None] | None = None,
) -> tuple[list[SocketClient], int]:
    """One socket per user, round-robin over ``ports``; returns the open ones and the failures."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    opened: list[SocketClient] = []
    failed = 0

    async def one(index: int, user: str) -> None:
        nonlocal failed
        port = ports[index % len(ports)]
        async with gate:
            try:
                _, client = await loop.create_connection(
                    lambda: SocketClient(host, port, user, arrivals), host, port
                )
                await asyncio.wait_for(client.ready, 30)
            except (OSError, TimeoutError, ConnectionError):
                failed += 1
                return
        opened.append(client)
        if on_open is not None:
            on_open(client)

    await asyncio.gather(*(one(i, user) for i, user in enumerate(users)))
    return opened, failed


def users(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n:06d}" for n in range(count)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
