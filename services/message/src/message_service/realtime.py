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
from litestar.types import WebSocketSendEvent

from chat_core import metrics, ratelimit
from chat_core.auth import AuthError, Principal, TokenVerifier, token_from_connection
from chat_core.backends import Backends
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
_PAGE = 100
_log = structlog.get_logger("message_service.realtime")


class _Ping(msgspec.Struct):
    type: str = ""


_PONG = '{"type":"pong"}'
_RESYNC = '{"type":"session.resync"}'
_CLIENT_FRAME = msgspec.json.Decoder(_Ping)
CLOSE_SECONDS = 2.0  # a close frame that cannot be written by then (the client stopped reading): abort
_DECODED_EVENTS = 256  # bus events whose decoded form is kept for the sockets still receiving them

# What a socket's queue holds: a text frame ready to write, or an event of the user's own channel or a
# change of subscription, which need a round trip to the bus (done by the socket's sender, in order).
_Outbound = tuple[str, str | bytes]  # ("", frame) | (own channel, payload) | ("-", channel to drop)


class _Decoded:
    """One bus event as every socket of this process needs it: decoded and re-encoded once, not once per
    socket (a message to 1,000 members would otherwise be parsed 1,000 times, members list included)."""

    __slots__ = ("frame", "members")

    def __init__(self, frame: str, members: frozenset[str] | None) -> None:
        self.frame = frame
        self.members = members


class _Session:
    """One open socket: its subscription, its outbound queue and its presence.

    Three tasks per socket: the receiver (client frames), the sender (the queue to the socket) and the
    timer (presence heartbeats, token expiry). Events are routed in the bus's callback, so a delivery is
    one queue entry of a frame already encoded for every socket.
    """

    __slots__ = (
        "connection_id",
        "expires_at",
        "outbound",
        "overflowed",
        "own_channel",
        "sender",
        "socket",
        "sockets",
        "subscription",
        "user_id",
        "wakeup",
    )

    def __init__(
        self, sockets: RealtimeSockets, socket: WebSocket[Any, Any, Any], principal: Principal
    ) -> None:
        self.sockets = sockets
        self.socket = socket
        self.user_id = principal.user_id
        self.expires_at = principal.expires_at
        self.connection_id = uuid.uuid4().hex
        self.own_channel = user_channel(self.user_id)
        # A deque and one future while the sender waits, not an asyncio.Queue: a Queue carries three
        # deques and an Event (~2.5 KiB) for every idle socket.
        self.outbound: collections.deque[_Outbound] = collections.deque()
        self.wakeup: asyncio.Future[None] | None = None
        self.overflowed = False
        self.sender: asyncio.Task[None] | None = None
        self.subscription: Subscription | None = None

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
        self._queue(("", decoded.frame))

    def _queue(self, item: _Outbound) -> None:
        if self.overflowed:
            return
        if len(self.outbound) < OUTBOUND_LIMIT:
            self.outbound.append(item)
            if self.wakeup is not None and not self.wakeup.done():
                self.wakeup.set_result(None)
        else:
            # The client reads slower than its events come: drop the socket (1013) rather than buffer
            # without bound; the sender may be stuck on a socket that does not drain, so cancel it.
            self.overflowed = True
            if self.sender is not None:
                self.sender.cancel()

    def on_gap(self) -> None:
        """The bus lost events of this subscription: the client resyncs (queued ahead of later events)."""
        metrics.WEBSOCKET_RESYNCS.inc()
        self._queue(("", _RESYNC))

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

    async def heartbeat(self) -> None:
        try:
            await self.sockets.presence.heartbeat(self.user_id, self.connection_id)
        except Exception as exc:
            # Without presence the user merely gets pushes while online; the socket itself still works.
            _log.warning("presence_heartbeat_failed", user_id=self.user_id, error=repr(exc))

    async def close(self) -> None:
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.close()
        try:
            await self.sockets.presence.disconnect(self.user_id, self.connection_id)
        except Exception as exc:
            _log.warning("presence_disconnect_failed", user_id=self.user_id, error=repr(exc))

    # --- the tasks of a session ---------------------------------------------------------------------
    async def send_events(self) -> None:
        send = self.socket.send
        outbound = self.outbound
        loop = asyncio.get_running_loop()
        while True:
            while not outbound:
                self.wakeup = loop.create_future()
                try:
                    await self.wakeup
                finally:
                    self.wakeup = None
            channel, data = outbound.popleft()
            if channel == "":
                frame: str | None = data  # type: ignore[assignment]
                if data is _RESYNC:
                    await self._catch_up_on_membership()
            elif channel == "-":
                assert self.subscription is not None
                await self.subscription.remove([data])  # type: ignore[list-item]
                continue
            else:
                frame = await self._own_event(data)  # type: ignore[arg-type]
            if frame is not None:
                # The raw ASGI send: the frame is already text, Litestar's send_data would only re-check it.
                await send(WebSocketSendEvent(type="websocket.send", text=frame, bytes=None))

    async def _own_event(self, payload: bytes) -> str | None:
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
        return bus_event_for_client(envelope).decode()

    async def receive_frames(self) -> int:
        """Answers pings until the client leaves (0) or breaks a limit (the close code)."""
        while True:
            try:
                raw = await self.socket.receive_data(mode="text")
            except WebSocketDisconnect:
                return 0
            if len(raw) > self.sockets.max_frame_bytes:  # the server's ws_max_size catches it first
                return CLOSE_TOO_BIG
            try:
                await self.sockets.frames.hit("socket_messages", self.connection_id)
            except RateLimited:
                return CLOSE_POLICY
            with contextlib.suppress(msgspec.DecodeError):
                if _CLIENT_FRAME.decode(raw).type == "ping":
                    await self.heartbeat()
                    self._queue(("", _PONG))

    async def keep_presence(self) -> int:
        """Presence heartbeats until the token expires; returns the close code then (4401)."""
        while (left := self.expires_at - time.time()) > 0:
            await asyncio.sleep(min(self.sockets.heartbeat_seconds, left))
            if self.expires_at - time.time() > 0:
                await self.heartbeat()
        return CLOSE_UNAUTHORIZED


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
    async def _close(session: _Session, code: int, reason: str) -> None:
        """Close with ``code``; a client that stopped reading cannot take even the close frame, so after
        ``CLOSE_SECONDS`` the handler returns anyway and the server drops the connection."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_SECONDS):
                await session.socket.close(code=code, reason=reason)

    @classmethod
    def from_backends(
        cls, settings: Settings, backends: Backends, *, bus: EventBus | None = None
    ) -> RealtimeSockets:
        """The sockets of one replica, on ``backends`` (``bus``: another event bus, such as a wrapper)."""
        return cls(
            backends.verifier,
            backends.conversations,
            bus or backends.event_bus,
            backends.presence,
            backends.rate_limiter,
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

    async def _authenticate(self, socket: WebSocket[Any, Any, Any]) -> Principal | None:
        try:
            return await self.verifier.verify(token_from_connection(socket, query_param="access_token"))
        except AuthError as exc:
            await socket.close(code=CLOSE_UNAUTHORIZED, reason=(exc.detail or "unauthorized")[:120])
            return None

    async def _connect_allowed(self, socket: WebSocket[Any, Any, Any]) -> bool:
        """Counts the connect (per user, or per client IP without a valid token); refuses it when over."""
        try:
            principal: Principal | None = await self.verifier.verify(
                token_from_connection(socket, query_param="access_token")
            )
        except AuthError:
            principal = None  # told after the accept, with 4401; counted against its IP meanwhile
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
        if not await self._connect_allowed(socket):
            return
        # Accept first: a browser cannot read the HTTP status of a refused handshake, only a close code.
        await socket.accept()
        principal = await self._authenticate(socket)
        if principal is None:
            return
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
            await self._run(session)
        finally:
            metrics.WEBSOCKET_CONNECTIONS.dec()
            await session.close()

    async def _run(self, session: _Session) -> None:
        timer = asyncio.ensure_future(session.keep_presence())
        receiver = asyncio.ensure_future(session.receive_frames())
        sender = session.sender = asyncio.ensure_future(session.send_events())
        tasks: set[asyncio.Future[Any]] = {receiver, sender, timer}
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if session.overflowed:
            await self._close(session, CLOSE_TRY_AGAIN, "too slow: events were dropped")
            return
        if timer in done and not timer.cancelled() and timer.exception() is None:
            await self._close(session, CLOSE_UNAUTHORIZED, "token expired")
            return
        if (
            receiver in done
            and not receiver.cancelled()
            and receiver.exception() is None
            and receiver.result()
        ):
            code = receiver.result()
            reason = "frame too big" if code == CLOSE_TOO_BIG else "too many frames: slow down"
            await self._close(session, code, reason)
            return
        for task in done:
            if (
                not task.cancelled()
                and (error := task.exception()) is not None
                and not isinstance(error, WebSocketDisconnect)
            ):
                # The bus failing under a live socket (a resubscribe while routing) is "try again later"
                # like a bus that is down at connect time; anything else is our error.
                unavailable = isinstance(error, EventBusUnavailable)
                _log.warning("socket_failed", user_id=session.user_id, error=repr(error))
                await self._close(
                    session,
                    CLOSE_TRY_AGAIN if unavailable else CLOSE_INTERNAL_ERROR,
                    "real-time events are unavailable" if unavailable else "internal error",
                )
