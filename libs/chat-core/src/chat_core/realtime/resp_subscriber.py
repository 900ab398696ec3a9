"""Our own Redis subscriber: ONE connection in subscriber mode per process, speaking RESP directly.

Every local subscriber (sockets, membership caches) shares it: channels are reference-counted, so a
conversation with 500 local sockets is one ``SUBSCRIBE``. It is ours rather than redis-py's ``PubSub``
because we need what that one's reconnect path does not give: many tasks subscribing while one task reads,
``subscribe()`` returning only once Redis has confirmed (so an event published right after is never
missed), and an explicit resubscribe of every live channel after an outage. hiredis parses the replies.
(``docs/adr/0002-own-redis-subscriber.md``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import structlog
from redis.exceptions import RedisError

from chat_core.realtime import EventBusUnavailable, EventHandler

__all__ = ["RespSubscriber", "RespSubscription"]

_log = structlog.get_logger("chat_core.realtime.redis")

CONNECT_TIMEOUT_SECONDS = 3.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
IDLE_PING_SECONDS = 15.0  # a silent subscriber connection is probed this often; no answer -> reconnect
RECONNECT_MAX_DELAY_SECONDS = 2.0
_SUBSCRIBE_CHUNK = 500


@dataclass
class _Op:
    """A SUBSCRIBE or UNSUBSCRIBE of one channel sent on the current connection, awaiting its reply."""

    subscribe: bool
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def resolve(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)


class RespSubscription:
    def __init__(self, subscriber: RespSubscriber, handler: EventHandler) -> None:
        self._subscriber = subscriber
        self.handler = handler
        self.channels: set[str] = set()
        self._closed = False

    async def add(self, channels: Iterable[str]) -> None:
        if self._closed:
            raise RuntimeError("the subscription is closed")
        new = [channel for channel in dict.fromkeys(channels) if channel not in self.channels]
        self.channels.update(new)
        try:
            await self._subscriber.acquire(new, self)
        except BaseException:
            self.channels.difference_update(new)
            self._subscriber.release(new, self)
            raise

    async def remove(self, channels: Iterable[str]) -> None:
        gone = [channel for channel in dict.fromkeys(channels) if channel in self.channels]
        self.channels.difference_update(gone)
        self._subscriber.release(gone, self)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.remove(list(self.channels))


class RespSubscriber:
    """The process's one subscriber-mode connection, multiplexing every local subscription."""

    def __init__(self, url: str) -> None:
        self._url = urlsplit(url)
        self._handlers: dict[str, set[RespSubscription]] = {}
        self._live: set[str] = set()  # channels Redis confirmed on the current connection
        self._pending: dict[str, deque[_Op]] = {}  # per channel, commands awaiting their reply, in order
        self._after_reconnect: dict[str, list[asyncio.Future[None]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._retry_now = asyncio.Event()

    # --- what subscriptions call ----------------------------------------------------------------------
    async def acquire(self, channels: list[str], subscription: RespSubscription) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-subscriber")
        first: list[str] = []
        for channel in channels:
            subscribers = self._handlers.setdefault(channel, set())
            if not subscribers:
                first.append(channel)
            subscribers.add(subscription)
        if first and self._writer is not None:
            self._send(b"SUBSCRIBE", first, subscribe=True)
        waits = [w for w in (self._wait_live(channel) for channel in channels) if w is not None]
        if not waits:
            return
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
                await asyncio.gather(*waits)
        except TimeoutError:
            raise EventBusUnavailable("redis did not confirm the subscription in time") from None

    def release(self, channels: list[str], subscription: RespSubscription) -> None:
        last: list[str] = []
        for channel in channels:
            subscribers = self._handlers.get(channel)
            if subscribers is None:
                continue
            subscribers.discard(subscription)
            if not subscribers:
                del self._handlers[channel]
                last.append(channel)
                for waiter in self._after_reconnect.pop(channel, []):
                    waiter.cancel()
        if last and self._writer is not None:
            self._send(b"UNSUBSCRIBE", last, subscribe=False)

    def _wait_live(self, channel: str) -> asyncio.Future[None] | None:
        """A future resolved once ``channel`` is subscribed on Redis; None when it already is."""
        ops = self._pending.get(channel)
        if ops and ops[-1].subscribe:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ops[-1].waiters.append(waiter)
            return waiter
        if channel in self._live and not ops:
            return None
        # Disconnected (or reconnecting): the resubscribe after the reconnect resolves it.
        waiter = asyncio.get_running_loop().create_future()
        self._after_reconnect.setdefault(channel, []).append(waiter)
        return waiter

    def _send(self, command: bytes, channels: list[str], *, subscribe: bool) -> None:
        writer = self._writer
        assert writer is not None
        for start in range(0, len(channels), _SUBSCRIBE_CHUNK):
            chunk = channels[start : start + _SUBSCRIBE_CHUNK]
            for channel in chunk:
                op = _Op(subscribe)
                if subscribe:
                    op.waiters.extend(self._after_reconnect.pop(channel, []))
                self._pending.setdefault(channel, deque()).append(op)
            # Writes are buffered synchronously, so commands from concurrent tasks never interleave.
            writer.write(_pack(command, *(c.encode() for c in chunk)))

    # --- the connection -------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    reader, writer = await self._open()
            except Exception as exc:
                _log.warning("redis_subscriber_connect_failed", error=f"{type(exc).__name__}: {exc}")
                self._fail_waiters(EventBusUnavailable(f"redis is unreachable: {exc}"))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()  # a readiness probe saw Redis answer again
                self._retry_now.clear()
                delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
                continue
            self._writer = writer
            try:
                if self._handlers:
                    self._send(b"SUBSCRIBE", list(self._handlers), subscribe=True)
                self.connected.set()
                delay = 0.05
                await self._read(reader, writer)
            except Exception as exc:  # any failure of this connection means: reconnect and resubscribe
                _log.warning("redis_subscriber_disconnected", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._disconnected(writer)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = self._url
        context = ssl.create_default_context() if url.scheme == "rediss" else None
        reader, writer = await asyncio.open_connection(
            url.hostname or "127.0.0.1", url.port or 6379, ssl=context
        )
        if url.password is not None or url.username:
            auth = [b"AUTH"]
            if url.username:
                auth.append(unquote(url.username).encode())
            auth.append(unquote(url.password or "").encode())
            writer.write(_pack(*auth))
            parser = hiredis.Reader()
            while (reply := parser.gets()) is False:
                data = await reader.read(4096)
                if not data:
                    raise ConnectionError("redis closed the connection during AUTH")
                parser.feed(data)
            if isinstance(reply, Exception):
                writer.close()
                raise RedisError(f"AUTH failed: {reply}")
        return reader, writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        awaiting_pong = False
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races a read.
                async with asyncio.timeout(IDLE_PING_SECONDS):
                    data = await reader.read(65536)
            except TimeoutError:
                if awaiting_pong:
                    raise TimeoutError("redis did not answer PING") from None
                writer.write(_pack(b"PING"))
                awaiting_pong = True
                continue
            if not data:
                raise ConnectionError("redis closed the subscriber connection")
            awaiting_pong = False
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                self._on_reply(reply)

    def _on_reply(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            _log.error("redis_subscriber_error_reply", error=str(reply))
            return
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message":
            channel = reply[1].decode()
            for subscription in list(self._handlers.get(channel, ())):
                try:
                    subscription.handler(channel, reply[2])
                except Exception:
                    # One broken subscriber must not keep an event from the others.
                    _log.exception("event_handler_failed", channel=channel)
        elif kind in (b"subscribe", b"unsubscribe"):
            channel = reply[1].decode()
            ops = self._pending.get(channel)
            if not ops:
                return
            op = ops.popleft()
            if not ops:
                del self._pending[channel]
            if op.subscribe:
                self._live.add(channel)
                op.resolve()
            else:
                self._live.discard(channel)

    def _fail_waiters(self, error: Exception) -> None:
        """Subscribers waiting for a confirmation learn now that Redis is down, not at their timeout.

        Subscriptions already open stay registered and are resubscribed once Redis is back.
        """
        for waiters in self._after_reconnect.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._after_reconnect.clear()

    def _disconnected(self, writer: asyncio.StreamWriter) -> None:
        self.connected.clear()
        self._writer = None
        self._live.clear()
        for channel, ops in self._pending.items():
            for op in ops:
                if op.subscribe and channel in self._handlers:
                    self._after_reconnect.setdefault(channel, []).extend(op.waiters)
        self._pending.clear()
        writer.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for waiters in self._after_reconnect.values():
            for waiter in waiters:
                waiter.cancel()
        self._after_reconnect.clear()

    async def healthy(self, wait: float) -> bool:
        """False while a started subscriber connection is down (sockets would miss events).

        When it is down, the reconnect backoff is cut short and the answer waits up to ``wait`` seconds
        for the reconnect: the caller just reached Redis, so it is probably back.
        """
        if self._task is None or self.connected.is_set():
            return True
        self._retry_now.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.connected.wait()
        return self.connected.is_set()


def _pack(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)
