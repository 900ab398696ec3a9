"""``GET /ws``: the real-time socket. Events of every conversation the user is in, as they happen.

Protocol (JSON text frames):

* connect with ``Authorization: Bearer <token>`` or ``?access_token=<token>`` (browsers cannot set headers
  on a WebSocket); a missing, bad or expired token closes the socket with code 4401;
* the server sends ``{"type": "session.ready", "userId", "heartbeatSeconds"}`` once it is subscribed, then:
  ``message.created`` ``{conversationId, message}`` (the full stored message), ``message.read``
  ``{conversationId, messageId, userId, readBy}``, ``conversation.joined`` / ``conversation.left``
  ``{conversationId}``, when the user is added to or removed from a conversation while connected;
* ``{"type": "session.resync"}`` when the socket stayed open but its subscription was interrupted (the
  bus lost its connection to Redis, or a cluster slot moved) and is whole again: events published
  meanwhile are lost, so the client resyncs with the list endpoints as after a reconnect; the events
  that follow it are live again;
* the client may send ``{"type": "ping"}`` (answer ``{"type": "pong"}``);
* close code 1013 means "try again later": the real-time bus is unavailable, or the client read too
  slowly and fell ``OUTBOUND_LIMIT`` events behind. Events are at most once: after a reconnect or a
  ``session.resync``, clients resync with the list endpoints (and de-duplicate by ``messageId``).

Limits (docs/operations/limits.md): connects count against ``RATE_LIMIT_SOCKET_CONNECTS`` per user (per
client IP without a valid token) before the handshake is accepted: over it, the handshake is answered with
HTTP 429 (``Retry-After``, RateLimit headers) where the server supports the ASGI denial response (uvicorn
does), else accepted and closed with 1008. Once open: a frame over ``SOCKET_MAX_FRAME_BYTES`` closes with
1009, more frames than ``RATE_LIMIT_SOCKET_MESSAGES`` with 1008, and a socket beyond ``MAX_SOCKETS_PER_USER``
(on this replica) with 4429.

The user is online (presence) while the socket is open: the server refreshes presence every third of
``PRESENCE_TTL_SECONDS`` and clears it on close, so a crashed server's sockets expire on their own.
One subscription per socket, on the user's own channel (membership changes) plus one channel per
conversation; the bus multiplexes them onto one connection per process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from typing import Any

import msgspec
import structlog
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import WebsocketRouteHandler
from litestar.types import Empty, WebSocketSendEvent
from litestar.utils.scope.state import ScopeState

from chat_core import metrics, ratelimit
from chat_core.auth import AuthError, Principal, TokenVerifier, token_from_connection
from chat_core.chatstore import ConversationStore
from chat_core.errors import problem_body
from chat_core.ratelimit import RateLimited, RateLimiter
from chat_core.realtime import (
    EventBus,
    EventBusUnavailable,
    Presence,
    Subscription,
    conversation_channel,
    user_channel,
)
from chat_core.realtime.events import bus_event_for_client, decode_envelope
from chat_core.settings import Settings
from chat_core.websocket_server import ClientDisconnected, frame_writer, text_frame
from message_service.ports import MessagePorts

__all__ = [
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_MANY_SOCKETS",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNAUTHORIZED",
    "OUTBOUND_LIMIT",
    "RealtimeSockets",
]

CLOSE_UNAUTHORIZED = 4401
CLOSE_TRY_AGAIN = 1013
CLOSE_POLICY = 1008  # too many frames (or connects, where a 429 cannot be sent)
CLOSE_TOO_BIG = 1009  # a frame over SOCKET_MAX_FRAME_BYTES
CLOSE_TOO_MANY_SOCKETS = 4429  # over MAX_SOCKETS_PER_USER
CLOSE_INTERNAL_ERROR = 1011
OUTBOUND_LIMIT = 1000  # events queued for one socket before it counts as too slow
PRESENCE_CALLS_AT_ONCE = 32  # timed presence heartbeats and disconnects in flight at once, per process
_PAGE = 100
_log = structlog.get_logger("message_service.realtime")


class _Ping(msgspec.Struct):
    type: str = ""


_CLIENT_FRAME = msgspec.json.Decoder(_Ping)
CLOSE_SECONDS = 2.0  # a close frame that cannot be written by then (the client stopped reading): abort
_DECODED_EVENTS = 256  # bus events whose decoded form is kept for the sockets still receiving them


class _Decoded:
    """One bus event as every socket of this process needs it: decoded and encoded once, not once per
    socket (a message to 1,000 members would otherwise be parsed 1,000 times, members list included),
    down to the WebSocket frame written as is to every transport (``frame``; ``text`` for ASGI sends)."""

    __slots__ = ("frame", "members", "text")

    def __init__(self, text: str, members: frozenset[str] | None) -> None:
        self.text = text
        self.frame = text_frame(text.encode())
        self.members = members


_PONG = _Decoded('{"type":"pong"}', None)
_RESYNC = _Decoded('{"type":"session.resync"}', None)

# What a socket's backlog holds, in order: a frame to write, or an event of the user's own channel or a
# change of subscription, which need a round trip to the bus first.
_Outbound = _Decoded | tuple[str, bytes | str]  # frame | (own channel, payload) | ("-", channel to drop)


class _Session:
    """One open socket: its subscription, its presence, and its backlog when it has one.

    No task of its own while it keeps up: the handler's task (the server's, per connection) reads client
    frames; events are routed in the bus's callback and each written there to the socket's transport, a
    frame encoded once per process (``FrameWriter``); a timer handle refreshes presence and ends the
    session when the token expires. A backlog (a deque, and one task draining it) exists only while
    something must wait: the transport above its high-water mark, a frame behind a resubscription, the
    server without ``FrameWriter`` (ASGI sends). ``OUTBOUND_LIMIT`` entries behind: the socket is dropped.
    """

    __slots__ = (
        "beat",
        "connection_id",
        "drainer",
        "expires_at",
        "held",
        "outbound",
        "own_channel",
        "send",
        "sockets",
        "stop",
        "subscription",
        "task",
        "timer",
        "user_id",
        "writer",
    )

    def __init__(
        self, sockets: RealtimeSockets, socket: WebSocket[Any, Any, Any], principal: Principal
    ) -> None:
        self.sockets = sockets
        self.send = socket.send
        self.writer = frame_writer(socket.scope)
        self.user_id = principal.user_id
        self.expires_at = principal.expires_at
        self.connection_id = uuid.uuid4().hex
        self.own_channel = user_channel(self.user_id)
        # Until session.ready is written, events wait here (then None: no backlog, frames go straight out).
        self.outbound: collections.deque[_Outbound] | None = collections.deque()
        self.held = True
        self.drainer: asyncio.Task[None] | None = None
        self.subscription: Subscription | None = None
        self.stop: tuple[int, str] | None = None  # why the session ends, when something else than a read
        self.task: asyncio.Task[Any] | None = None  # the handler's, while it reads client frames
        self.timer: asyncio.TimerHandle | None = None
        self.beat: asyncio.Task[None] | None = None  # a presence heartbeat of the timer, while it runs

    # --- delivery: in the bus's callback ---------------------------------------------------------------
    def on_event(self, channel: str, payload: bytes) -> None:
        if channel == self.own_channel:
            self._queue((channel, payload))
            return
        decoded = self.sockets.decoded(payload)
        if decoded is None:
            return
        if decoded.members is not None and self.user_id not in decoded.members:
            # Removed while connected, and the conversation.left was lost: stop listening.
            self._queue(("-", channel))
            return
        self._deliver(decoded)

    def _deliver(self, decoded: _Decoded) -> None:
        """Write now when nothing is ahead and the transport takes it; else behind the backlog."""
        if self.outbound is None and self.writer is not None and self.writer.write_frame(decoded.frame):
            return
        self._queue(decoded)

    def _queue(self, item: _Outbound) -> None:
        if self.stop is not None:
            return
        outbound = self.outbound
        if outbound is None:
            outbound = self.outbound = collections.deque()
        if len(outbound) >= OUTBOUND_LIMIT:
            # The client reads slower than its events come: drop the socket (1013) rather than buffer
            # without bound.
            self.end(CLOSE_TRY_AGAIN, "too slow: events were dropped")
            return
        outbound.append(item)
        if self.drainer is None and not self.held:
            self.drainer = asyncio.get_running_loop().create_task(self._drain())

    def on_gap(self) -> None:
        """The bus lost events of this subscription: the client resyncs (queued ahead of later events)."""
        metrics.WEBSOCKET_RESYNCS.inc()
        self._queue(_RESYNC)

    def end(self, code: int, reason: str) -> None:
        """End the session with ``code``: the handler stops reading and closes (the first reason wins)."""
        if self.stop is not None:
            return
        self.stop = (code, reason)
        if self.drainer is not None and self.drainer is not asyncio.current_task():
            self.drainer.cancel()  # it may be stuck on a transport that never drains
        if self.task is not None:
            self.task.cancel()

    def release(self) -> None:
        """session.ready is written: what came meanwhile goes out, then frames go straight out."""
        self.held = False
        if self.outbound:
            self.drainer = asyncio.get_running_loop().create_task(self._drain())
        else:
            self.outbound = None

    async def _drain(self) -> None:
        """Writes the backlog in order until it is empty (then frames go straight out again)."""
        outbound = self.outbound
        assert outbound is not None
        try:
            while outbound:
                item = outbound.popleft()
                if isinstance(item, _Decoded):
                    if item is _RESYNC:
                        await self._catch_up_on_membership()
                    await self._write(item)
                elif isinstance(data := item[1], str):  # ("-", channel)
                    assert self.subscription is not None
                    await self.subscription.remove([data])
                elif (frame := await self._own_event(data)) is not None:
                    await self._write(frame)
        except (ClientDisconnected, WebSocketDisconnect):
            self.end(0, "")
        except Exception as exc:
            # The bus failing under a live socket (a resubscribe) is "try again later" like a bus that is
            # down at connect time; anything else is our error.
            unavailable = isinstance(exc, EventBusUnavailable)
            _log.warning("socket_failed", user_id=self.user_id, error=repr(exc))
            if unavailable:
                self.end(CLOSE_TRY_AGAIN, "real-time events are unavailable")
            else:
                self.end(CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            self.drainer = None
            if not outbound and self.outbound is outbound:
                self.outbound = None

    async def _write(self, decoded: _Decoded) -> None:
        writer = self.writer
        if writer is None:
            # The raw ASGI send: the frame is already text, Litestar's send_data would only re-check it.
            await self.send(WebSocketSendEvent(type="websocket.send", text=decoded.text, bytes=None))
            return
        while not writer.write_frame(decoded.frame):
            await writer.drained()

    # --- the subscription and presence -----------------------------------------------------------------
    async def open(self) -> None:
        bus = self.sockets.bus
        # The user's own channel first: a conversation joined while the list below is read is not missed.
        self.subscription = await bus.subscribe([self.own_channel], self.on_event, on_gap=self.on_gap)
        await self.subscription.add(await self._conversation_channels())
        await self.heartbeat()

    async def _conversation_channels(self) -> list[str]:
        channels: list[str] = []
        cursor: str | None = None
        while True:
            page = await self.sockets.store.list_conversations(self.user_id, limit=_PAGE, cursor=cursor)
            channels.extend(conversation_channel(c.conversation_id) for c in page.items)
            cursor = page.next_cursor
            if cursor is None:
                return channels

    async def _catch_up_on_membership(self) -> None:
        """After a gap: a ``conversation.joined`` may be among the lost events, so subscribe to every
        conversation the store lists now, before the client refetches (conversations left meanwhile are
        dropped by ``on_event`` at their next event)."""
        assert self.subscription is not None
        try:
            channels = await self._conversation_channels()
        except Exception as exc:
            # Unsure what it listens to: the client reconnects (1013) and gets a fresh subscription.
            raise EventBusUnavailable(f"conversations unreadable after a bus gap: {exc!r}") from exc
        await self.subscription.add(channels)  # channels already held are left as they are

    async def _own_event(self, payload: bytes) -> _Decoded | None:
        envelope = decode_envelope(payload)
        if envelope is None:
            return None
        assert self.subscription is not None
        target = conversation_channel(envelope.conversation_id)
        try:
            if envelope.type == "conversation.joined":
                await self.subscription.add([target])
            elif envelope.type == "conversation.left":
                await self.subscription.remove([target])
        except EventBusUnavailable as exc:
            _log.warning("socket_resubscribe_failed", user_id=self.user_id, error=repr(exc))
        return _Decoded(bus_event_for_client(envelope).decode(), None)

    async def heartbeat(self) -> None:
        try:
            await self.sockets.presence.heartbeat(self.user_id, self.connection_id)
        except Exception as exc:
            # Without presence the user merely gets pushes while online; the socket itself still works.
            _log.warning("presence_heartbeat_failed", user_id=self.user_id, error=repr(exc))

    def schedule(self) -> None:
        """The next presence heartbeat, or the end of the session when the token expires first."""
        left = self.expires_at - time.time()
        if left <= 0:
            self.timer = None
            self.end(CLOSE_UNAUTHORIZED, "token expired")
            return
        self.timer = asyncio.get_running_loop().call_later(
            min(self.sockets.heartbeat_seconds, left), self._on_timer
        )

    def _on_timer(self) -> None:
        if self.expires_at - time.time() > 0 and self.beat is None:  # the last one still waiting: skip
            self.beat = asyncio.get_running_loop().create_task(self._timed_heartbeat())
        self.schedule()

    async def _timed_heartbeat(self) -> None:
        try:
            # A few at once per process: 10,000 sockets' timers must not open 10,000 Redis connections
            # (redis-py's pool refuses past 100) when Redis answers slowly.
            async with self.sockets.presence_calls:
                await self.heartbeat()
        finally:
            self.beat = None

    async def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.beat is not None:  # not after the disconnect below: it would mark the user online again
            self.beat.cancel()
            with contextlib.suppress(BaseException):
                await self.beat
        if self.drainer is not None:
            self.drainer.cancel()
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.close()
        try:
            async with self.sockets.presence_calls:  # a server shutting down closes every socket at once
                await self.sockets.presence.disconnect(self.user_id, self.connection_id)
        except Exception as exc:
            _log.warning("presence_disconnect_failed", user_id=self.user_id, error=repr(exc))

    # --- client frames: in the handler's task ----------------------------------------------------------
    async def receive_frames(self, socket: WebSocket[Any, Any, Any]) -> tuple[int, str]:
        """Answers pings until the client leaves (0), breaks a limit, or ``end`` is called (its code)."""
        task = self.task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                try:
                    raw = await socket.receive_data(mode="text")
                except WebSocketDisconnect:
                    return 0, ""
                if len(raw) > self.sockets.max_frame_bytes:  # the server's ws_max_size catches it first
                    return CLOSE_TOO_BIG, "frame too big"
                try:
                    await self.sockets.frames.hit("socket_messages", self.connection_id)
                except RateLimited:
                    return CLOSE_POLICY, "too many frames: slow down"
                with contextlib.suppress(msgspec.DecodeError):
                    if _CLIENT_FRAME.decode(raw).type == "ping":
                        await self.heartbeat()
                        self._deliver(_PONG)
        except asyncio.CancelledError:
            if self.stop is None or task.uncancel() > 0:
                raise  # cancelled from outside (the server's shutdown), not by end()
            return self.stop
        finally:
            self.task = None


def _forget_handshake(socket: WebSocket[Any, Any, Any]) -> None:
    """The handshake's headers, raw in the scope and as Litestar parsed and cached them (~2.5 KiB), are not
    read once the socket is authenticated and counted: not kept for as long as it stays open."""
    socket.scope["headers"] = []
    ScopeState.from_scope(socket.scope).headers = Empty


class RealtimeSockets:
    def __init__(
        self,
        verifier: TokenVerifier,
        store: ConversationStore,
        bus: EventBus,
        presence: Presence,
        limiter: RateLimiter,
        frames: RateLimiter,
        *,
        presence_ttl_seconds: float,
        max_frame_bytes: int,
        sockets_per_user: int,
    ) -> None:
        self.limiter = limiter  # connects: shared by replicas (LIMIT_STORE)
        self.frames = frames  # frames of one socket: this process's memory
        self.max_frame_bytes = max_frame_bytes
        self.sockets_per_user = sockets_per_user
        self._open: dict[str, int] = {}  # user -> sockets open on this replica
        self.verifier = verifier
        self.store = store
        self.bus = bus
        self.presence = presence
        self.heartbeat_seconds = max(1.0, presence_ttl_seconds / 3)
        self._decoded: dict[bytes, _Decoded | None] = {}
        self.presence_calls = asyncio.Semaphore(PRESENCE_CALLS_AT_ONCE)

    def decoded(self, payload: bytes) -> _Decoded | None:
        """``payload`` as its sockets send it (None: not an event), decoded once for all of them: the bus
        hands every subscriber the same bytes, whose hash is computed once and kept by the bytes object."""
        try:
            return self._decoded[payload]
        except KeyError:
            pass
        envelope = decode_envelope(payload)
        decoded = (
            None
            if envelope is None
            else _Decoded(
                bus_event_for_client(envelope).decode(),
                None if envelope.members is None else frozenset(envelope.members),
            )
        )
        if len(self._decoded) >= _DECODED_EVENTS:
            del self._decoded[next(iter(self._decoded))]  # the oldest: its sockets have had it
        self._decoded[payload] = decoded
        return decoded

    @staticmethod
    async def _close(session: _Session, socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
        """Close with ``code``; a client that stopped reading cannot take even the close frame, so after
        ``CLOSE_SECONDS`` the handler returns anyway and the server drops the connection."""
        if session.drainer is not None:
            session.drainer.cancel()  # nothing more is written after the close frame
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_SECONDS):
                await socket.close(code=code, reason=reason)

    @classmethod
    def from_ports(
        cls, settings: Settings, ports: MessagePorts, *, bus: EventBus | None = None
    ) -> RealtimeSockets:
        """The sockets of one replica, on ``ports`` (``bus``: another event bus, such as a wrapper)."""
        return cls(
            ports.verifier,
            ports.conversations,
            bus or ports.event_bus,
            ports.presence,
            ports.rate_limiter,
            ratelimit.in_process(settings.limits),
            presence_ttl_seconds=settings.presence.ttl_seconds,
            max_frame_bytes=settings.limits.socket_max_frame_bytes,
            sockets_per_user=settings.limits.sockets_per_user,
        )

    def route_handler(self) -> WebsocketRouteHandler:
        sockets = self

        @websocket("/ws", name="realtime_socket")
        async def realtime_socket(socket: WebSocket[Any, Any, Any]) -> None:
            await sockets.serve(socket)

        return realtime_socket

    async def _verify(self, socket: WebSocket[Any, Any, Any]) -> Principal | AuthError:
        """The socket's principal, or why it has none (told after the accept, with 4401): verified once."""
        try:
            return await self.verifier.verify(token_from_connection(socket, query_param="access_token"))
        except AuthError as exc:
            return exc

    async def _connect_allowed(self, socket: WebSocket[Any, Any, Any], principal: Principal | None) -> bool:
        """Counts the connect (per user, or per client IP without a valid token); refuses it when over."""
        try:
            await self.limiter.hit(
                "socket_connects", self.limiter.subject(socket, principal.user_id if principal else None)
            )
        except RateLimited as refused:
            await self._refuse(socket, refused)
            return False
        return True

    @staticmethod
    async def _refuse(socket: WebSocket[Any, Any, Any], refused: RateLimited) -> None:
        if "websocket.http.response" in (socket.scope.get("extensions") or {}):
            if socket.connection_state == "init":
                await socket.receive()  # the websocket.connect event
            body = msgspec.json.encode(
                problem_body(429, refused.code, refused.title, refused.detail, "/ws", refused.extra)
            )
            headers = [(b"content-type", b"application/problem+json")]
            headers += [(k.lower().encode(), v.encode()) for k, v in refused.headers.items()]
            await socket.send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
            await socket.send({"type": "websocket.http.response.body", "body": body, "more_body": False})
            return
        await socket.accept()
        await socket.close(code=CLOSE_POLICY, reason=f"rate limited; retry in {refused.retry_after} s")

    async def serve(self, socket: WebSocket[Any, Any, Any]) -> None:
        principal = await self._verify(socket)
        if not await self._connect_allowed(socket, None if isinstance(principal, AuthError) else principal):
            return
        # Accept first: a browser cannot read the HTTP status of a refused handshake, only a close code.
        await socket.accept()
        if isinstance(principal, AuthError):
            await socket.close(code=CLOSE_UNAUTHORIZED, reason=(principal.detail or "unauthorized")[:120])
            return
        _forget_handshake(socket)
        user_id = principal.user_id
        if self._open.get(user_id, 0) >= self.sockets_per_user:
            await socket.close(code=CLOSE_TOO_MANY_SOCKETS, reason="too many open sockets for this user")
            return
        self._open[user_id] = self._open.get(user_id, 0) + 1
        try:
            await self._serve(socket, principal)
        finally:
            if (left := self._open[user_id] - 1) > 0:
                self._open[user_id] = left
            else:
                del self._open[user_id]

    async def _serve(self, socket: WebSocket[Any, Any, Any], principal: Principal) -> None:
        session = _Session(self, socket, principal)
        metrics.WEBSOCKET_CONNECTIONS.inc()
        try:
            try:
                await session.open()
            except EventBusUnavailable as exc:
                _log.warning("socket_refused_bus_unavailable", user_id=session.user_id, error=repr(exc))
                await socket.close(code=CLOSE_TRY_AGAIN, reason="real-time events are unavailable")
                return
            await socket.send_json(
                {
                    "type": "session.ready",
                    "userId": session.user_id,
                    "heartbeatSeconds": self.heartbeat_seconds,
                }
            )
            session.release()
            session.schedule()
            # end() may have been called already (an overflow while session.ready was written)
            code, reason = session.stop or await session.receive_frames(socket)
            if code:
                await self._close(session, socket, code, reason)
        finally:
            metrics.WEBSOCKET_CONNECTIONS.dec()
            await session.close()
