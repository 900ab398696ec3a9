"""Our own Redis subscriber: ONE connection in subscriber mode per process, speaking RESP directly.

Every local subscriber (sockets, membership caches) shares it: channels are reference-counted, so a
conversation with 500 local sockets is one ``SUBSCRIBE``. It is ours rather than redis-py's ``PubSub``
because we need what that one's reconnect path does not give: many tasks subscribing while one task reads,
``subscribe()`` returning only once Redis has confirmed (so an event published right after is never
missed), and an explicit resubscribe of every live channel after an outage. hiredis parses the replies.
(``docs/adr/0002-own-redis-subscriber.md``.) Each subscription whose channels were live on a lost
connection is told of the gap (``on_gap``) once all of them are confirmed again, ahead of later events.

Cluster mode (``REDIS_MODE=cluster``, ``ShardedSubscriber``): sharded pub/sub (``SSUBSCRIBE``), so a
message only travels inside the shard that owns its channel's slot. One ``RespSubscriber(sharded=True)``
connection per primary that owns a subscribed slot; a channel whose slot moves (``-MOVED`` to a
subscribe, the server's ``sunsubscribe`` push when a slot migrates away, a node that stops answering) is
taken off its old node and subscribed on the owner the refreshed slot map names (a gap for its
subscriptions, reported once the new owner confirms; a subscription on several shards hears one report
once every shard it lost is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import hiredis
import structlog
from redis.crc import key_slot
from redis.exceptions import RedisError

from chat_core.realtime import EventBusUnavailable, EventHandler, GapHandler, Subscription

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

__all__ = ["ChannelMoved", "RespSubscriber", "RespSubscription", "ShardedSubscriber"]

_log = structlog.get_logger("chat_core.realtime.redis")

CONNECT_TIMEOUT_SECONDS = 3.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
IDLE_PING_SECONDS = 15.0  # a silent subscriber connection is probed this often; no answer -> reconnect
RECONNECT_MAX_DELAY_SECONDS = 2.0
_SUBSCRIBE_CHUNK = 500
TOPOLOGY_REFRESH_MIN_SECONDS = 0.5  # a node that keeps failing refreshes the slot map at most this often
_MOVE_ATTEMPTS = 5


class ChannelMoved(EventBusUnavailable):
    """The channel's slot is no longer served by the node this subscribe went to."""


class _Multiplexer(Protocol):
    async def acquire(self, channels: list[str], subscription: RespSubscription) -> None: ...

    def release(self, channels: list[str], subscription: RespSubscription) -> None: ...


LostChannels = dict[str, set["RespSubscription"]]


@dataclass
class _Op:
    """A SUBSCRIBE or UNSUBSCRIBE of one channel sent on the current connection, awaiting its reply."""

    subscribe: bool
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def resolve(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)


class RespSubscription(Subscription):
    # One per open socket: slots, and the set of interrupted channels only while there are some.
    __slots__ = ("_closed", "_interrupted", "_on_gap", "_subscriber", "channels", "handler")

    def __init__(
        self, subscriber: _Multiplexer, handler: EventHandler, on_gap: GapHandler | None = None
    ) -> None:
        self._subscriber = subscriber
        self.handler = handler
        self.channels: set[str] = set()
        self._closed = False
        self._on_gap = on_gap
        # Channels whose connection was lost (or that left their node) while subscribed, not yet confirmed
        # again. The gap is reported once, when the last of them is back: one outage, one report.
        self._interrupted: set[str] | None = None

    def interrupted(self, channel: str) -> None:
        """Events published on ``channel`` from now until it is confirmed again are lost."""
        if self._on_gap is not None and not self._closed and channel in self.channels:
            if self._interrupted is None:
                self._interrupted = set()
            self._interrupted.add(channel)

    def confirmed(self, channel: str) -> None:
        """``channel`` is subscribed (again): events published from now on reach the handler."""
        if self._interrupted is not None and channel in self._interrupted:
            self._interrupted.discard(channel)
            if not self._interrupted:
                self._interrupted = None
                self._report_gap()

    def _report_gap(self) -> None:
        if self._on_gap is None or self._closed:
            return
        try:
            self._on_gap()
        except Exception:
            _log.exception("gap_handler_failed")

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
        if self._interrupted and gone:
            self._interrupted.difference_update(gone)
            if not self._interrupted:
                self._interrupted = None
                self._report_gap()  # what is left is whole again; what was removed lost events too

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.remove(list(self.channels))


class RespSubscriber:
    """The process's one subscriber-mode connection, multiplexing every local subscription.

    ``sharded``: speak ``SSUBSCRIBE``/``SUNSUBSCRIBE`` to one cluster node (one channel per command, since a
    multi-channel one must stay in one slot). Channels this node stops serving are taken off it and handed
    to ``on_lost``; ``on_unreachable`` hears every failed connect.
    """

    def __init__(
        self,
        url: str,
        *,
        sharded: bool = False,
        on_lost: Callable[[LostChannels], None] | None = None,
        on_unreachable: Callable[[], None] | None = None,
        ca_cert: str = "",
    ) -> None:
        self._url = urlsplit(url)
        self._ca_cert = ca_cert
        self.sharded = sharded
        self._subscribe_command = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
        self._unsubscribe_command = b"SUNSUBSCRIBE" if sharded else b"UNSUBSCRIBE"
        self._message_kind = b"smessage" if sharded else b"message"
        self._subscribed_kind = b"ssubscribe" if sharded else b"subscribe"
        self._unsubscribed_kind = b"sunsubscribe" if sharded else b"unsubscribe"
        self._on_lost = on_lost
        self._on_unreachable = on_unreachable
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
            self._send(self._subscribe_command, first, subscribe=True)
        waits: list[asyncio.Future[None]] = []
        for channel in channels:
            waiter = self._wait_live(channel)
            if waiter is None:
                subscription.confirmed(channel)  # a channel handed over from another node, live here
            else:
                waits.append(waiter)
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
            self._send(self._unsubscribe_command, last, subscribe=False)

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
            if self.sharded:
                writer.write(b"".join(_pack(command, c.encode()) for c in chunk))
            else:
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
                if self._on_unreachable is not None:
                    self._on_unreachable()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()  # a readiness probe saw Redis answer again
                self._retry_now.clear()
                delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
                continue
            self._writer = writer
            try:
                if self._handlers:
                    self._send(self._subscribe_command, list(self._handlers), subscribe=True)
                self.connected.set()
                delay = 0.05
                await self._read(reader, writer)
            except Exception as exc:  # any failure of this connection means: reconnect and resubscribe
                _log.warning("redis_subscriber_disconnected", error=f"{type(exc).__name__}: {exc}")
            finally:
                self._disconnected(writer)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = self._url
        context = None
        if url.scheme == "rediss":
            context = ssl.create_default_context(cadata=self._ca_cert or None)
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
            moved = str(reply).split()
            if self.sharded and len(moved) >= 2 and moved[0] in ("MOVED", "ASK") and moved[1].isdigit():
                # A subscribe reached a node that no longer serves the slot: move its channels.
                self._slot_lost(int(moved[1]))
                return
            _log.error("redis_subscriber_error_reply", error=str(reply))
            return
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == self._message_kind:
            channel = reply[1].decode()
            for subscription in list(self._handlers.get(channel, ())):
                try:
                    subscription.handler(channel, reply[2])
                except Exception:
                    # One broken subscriber must not keep an event from the others.
                    _log.exception("event_handler_failed", channel=channel)
        elif kind in (self._subscribed_kind, self._unsubscribed_kind):
            channel = reply[1].decode()
            ops = self._pending.get(channel)
            if self.sharded and kind == self._unsubscribed_kind and (not ops or ops[0].subscribe):
                # Not an answer: the server dropped the channel because its slot migrated away.
                self._hand_over(self.evict([channel]))
                return
            if not ops:
                return
            op = ops.popleft()
            if not ops:
                del self._pending[channel]
            if op.subscribe:
                self._live.add(channel)
                # Before any event of the new subscription: a gap is reported ahead of what follows it.
                for subscription in list(self._handlers.get(channel, ())):
                    subscription.confirmed(channel)
                op.resolve()
            else:
                self._live.discard(channel)

    # --- cluster mode: channels this node no longer serves ---------------------------------------------
    def evict(self, channels: Iterable[str]) -> LostChannels:
        """Take ``channels`` off this connection (no command sent) and return their subscribers.

        Subscribes still waiting for a confirmation here fail with ``ChannelMoved``.
        """
        lost: LostChannels = {}
        moved = ChannelMoved("the channel's slot moved to another node")
        for channel in dict.fromkeys(channels):
            subscribers = self._handlers.pop(channel, None)
            if subscribers:
                lost[channel] = subscribers
                if channel in self._live:  # it was delivering: until its new node confirms, events are lost
                    for subscription in subscribers:
                        subscription.interrupted(channel)
            self._live.discard(channel)
            for op in self._pending.pop(channel, ()):
                for waiter in op.waiters:
                    if not waiter.done():
                        waiter.set_exception(moved)
            for waiter in self._after_reconnect.pop(channel, []):
                if not waiter.done():
                    waiter.set_exception(moved)
        return lost

    def channels(self) -> set[str]:
        return set(self._handlers)

    def _slot_lost(self, slot: int) -> None:
        channels = [c for c in {*self._handlers, *self._pending} if key_slot(c.encode()) == slot]
        self._hand_over(self.evict(channels))

    def _hand_over(self, lost: LostChannels) -> None:
        if lost and self._on_lost is not None:
            self._on_lost(lost)

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
        for channel in self._live:
            for subscription in self._handlers.get(channel, ()):
                subscription.interrupted(channel)
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
        """False while a started subscriber connection is down (sockets would miss events), or while
        the channels it carries are not all confirmed on it again.

        When it is down, the reconnect backoff is cut short and the answer waits up to ``wait`` seconds
        for the reconnect and the resubscribe: the caller just reached Redis, so it is probably back.
        """
        if self._task is None:
            return True
        if self.connected.is_set() and not self._pending and not self._after_reconnect:
            return True
        if not self.connected.is_set():
            self._retry_now.set()
        try:
            async with asyncio.timeout(wait):
                await self.connected.wait()
                waits = [w for w in (self._wait_live(c) for c in list(self._handlers)) if w is not None]
                if waits:
                    await asyncio.gather(*waits)
        except (TimeoutError, EventBusUnavailable):
            return False
        return self.connected.is_set()


class ShardedSubscriber:
    """Cluster mode: sharded pub/sub over one connection per primary owning a subscribed channel's slot.

    Publishing uses redis-py's ``RedisCluster`` (``SPUBLISH`` goes to the slot's owner); this side reads the
    same client's slot map to place each channel, and refreshes it whenever a node says a slot moved or
    stops answering. Every local subscription of a channel still shares one ``SSUBSCRIBE``.
    """

    def __init__(self, url: str, client: RedisCluster, *, ca_cert: str = "") -> None:
        self._url = urlsplit(url)
        self._ca_cert = ca_cert
        self._client = client
        self._nodes: dict[tuple[str, int], RespSubscriber] = {}
        self._placement: dict[str, RespSubscriber] = {}  # channel -> the node it is subscribed on
        self._initialized = False
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    # --- placement -------------------------------------------------------------------------------------
    async def _refresh(self, *, force: bool = True) -> None:
        """Reload the slot map (one refresh at a time; concurrent callers share it)."""
        loop = asyncio.get_running_loop()
        if not force and loop.time() - self._last_refresh < TOPOLOGY_REFRESH_MIN_SECONDS:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = loop.create_task(self._load_slots(initial=not self._initialized))
        await asyncio.shield(self._refreshing)

    async def _load_slots(self, *, initial: bool) -> None:
        try:
            if initial:
                await self._client.initialize()
            else:
                await self._client.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            raise EventBusUnavailable(f"the redis cluster's slot map cannot be read: {exc}") from exc
        finally:
            self._last_refresh = asyncio.get_running_loop().time()
        self._initialized = True

    def _owner(self, channel: str) -> RespSubscriber:
        try:
            node = self._client.get_node_from_key(channel)
        except RedisError as exc:
            raise EventBusUnavailable(f"no redis node serves {channel!r}: {exc}") from exc
        if node is None:
            raise EventBusUnavailable(f"no redis node serves {channel!r}")
        return self._node(node.host, int(node.port))

    def _node(self, host: str, port: int) -> RespSubscriber:
        subscriber = self._nodes.get((host, port))
        if subscriber is None:
            userinfo = self._url.netloc.rpartition("@")[0]
            netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
            subscriber = RespSubscriber(
                self._url._replace(netloc=netloc).geturl(),
                sharded=True,
                on_lost=self._on_lost,
                on_unreachable=lambda: self._spawn(self._node_unreachable(host, port)),
                ca_cert=self._ca_cert,
            )
            self._nodes[(host, port)] = subscriber
        return subscriber

    # --- what subscriptions call ----------------------------------------------------------------------
    async def acquire(self, channels: list[str], subscription: RespSubscription) -> None:
        if not self._initialized:
            await self._refresh()
        remaining = channels
        for _ in range(_MOVE_ATTEMPTS):
            groups: dict[RespSubscriber, list[str]] = {}
            for channel in remaining:
                owner = self._owner(channel)
                self._placement[channel] = owner
                groups.setdefault(owner, []).append(channel)
            nodes = list(groups)
            results = await asyncio.gather(
                *(node.acquire(groups[node], subscription) for node in nodes), return_exceptions=True
            )
            remaining = []
            for node, result in zip(nodes, results, strict=True):
                if isinstance(result, ChannelMoved):
                    remaining.extend(c for c in groups[node] if c in subscription.channels)
                elif isinstance(result, BaseException):
                    raise result
            if not remaining:
                return
            await self._refresh()
        raise EventBusUnavailable("the redis cluster kept moving the subscribed channels' slots")

    def release(self, channels: list[str], subscription: RespSubscription) -> None:
        for channel in channels:
            node = self._placement.get(channel)
            if node is None:
                continue
            node.release([channel], subscription)
            if channel not in node.channels():
                del self._placement[channel]

    # --- slots that moved, nodes that failed -----------------------------------------------------------
    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_lost(self, lost: LostChannels) -> None:
        for channel in lost:
            self._placement.pop(channel, None)
        self._spawn(self._resubscribe(lost))

    async def _resubscribe(self, lost: LostChannels) -> None:
        """Subscribe channels a node dropped on the node that owns them now."""
        by_subscription: dict[RespSubscription, list[str]] = {}
        for channel, subscriptions in lost.items():
            for subscription in subscriptions:
                if channel in subscription.channels:  # not removed meanwhile
                    by_subscription.setdefault(subscription, []).append(channel)
        delay = 0.05
        while by_subscription:
            try:
                await self._refresh()
                for subscription, channels in list(by_subscription.items()):
                    await self.acquire([c for c in channels if c in subscription.channels], subscription)
                    del by_subscription[subscription]
            except EventBusUnavailable as exc:
                _log.warning("redis_cluster_resubscribe_failed", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY_SECONDS)
        _log.info("redis_cluster_channels_moved", channels=len(lost))

    async def _node_unreachable(self, host: str, port: int) -> None:
        """A node does not answer: if the slot map now names other owners (failover), move there."""
        try:
            await self._refresh(force=False)
        except EventBusUnavailable:
            return
        node = self._nodes.get((host, port))
        if node is None:
            return
        moved = []
        for channel in node.channels():
            with contextlib.suppress(EventBusUnavailable):
                if self._owner(channel) is not node:
                    moved.append(channel)
        if moved:
            self._on_lost(node.evict(moved))

    # --- lifecycle ------------------------------------------------------------------------------------
    async def healthy(self, wait: float) -> bool:
        nodes = [node for node in self._nodes.values() if node.channels()]
        results = await asyncio.gather(*(node.healthy(wait) for node in nodes))
        return all(results)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for node in self._nodes.values():
            await node.close()
        self._nodes.clear()
        self._placement.clear()


def _pack(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)
