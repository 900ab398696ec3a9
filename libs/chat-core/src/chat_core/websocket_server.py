"""uvicorn's WebSocket protocol, cut down for many idle sockets, with ready frames written straight out.

``LeanWebSocketProtocol`` is what ``chat_core.server.uvicorn_options`` gives uvicorn as ``ws``: the same
behaviour as uvicorn's ``websockets-sansio`` implementation (the handshake, the frames and the close handshake
parsed by the sans-I/O ``websockets.ServerProtocol``; keepalive pings; the ASGI denial response), reshaped
for the cost of an idle socket, which decides how many sockets a pod holds (docs/benchmarks.md, measured
with tracemalloc by ``bench.socket_memory``):

* ``__slots__`` instead of an instance dictionary of ~45 attributes (~1.6 KiB);
* the ASGI receive queue a list created when something arrives, not an ``asyncio.Queue`` (three deques and
  an ``Event``: ~3 KiB); the writability flag a bool and a future while someone waits, not an ``Event``;
* the handshake's request and response (two ``Headers`` objects, ~3 KiB) dropped once answered, the
  request also from the frame of ``websockets``' handshake parser (``_forget_request``).

And the fast path of the fan-out (``FrameWriter``, in the scope's extensions under ``FRAMES``): a frame
encoded once per event per process (``text_frame``) is written to each socket's transport as is, from
the bus callback, without a task, a queue or an ``await`` per delivery, while the transport's buffer is
below its high-water mark; the caller queues (bounded) when it is not. Server frames are not masked and
no extension is negotiated (permessage-deflate is declined), so a text frame is its header and the bytes.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import struct
from asyncio import TimerHandle
from asyncio.transports import BaseTransport, Transport
from http import HTTPStatus
from typing import Any, Literal, Protocol, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN
from websockets.protocol import Protocol as SansIOProtocol
from websockets.server import ServerProtocol

__all__ = [
    "FRAMES",
    "ClientDisconnected",
    "FrameWriter",
    "LeanWebSocketProtocol",
    "frame_writer",
    "text_frame",
]

FRAMES = "chat.websocket.frames"  # the scope extension holding the socket's FrameWriter
_log = logging.getLogger("uvicorn.error")
_CLOSE_TIMEOUT = 10.0


class FrameWriter(Protocol):
    def write_frame(self, frame: bytes) -> bool:
        """Write ``frame`` (from ``text_frame``) now; False, writing nothing, when the transport's buffer is
        above its high-water mark or the socket is closing (then ``drained`` says which)."""

    async def drained(self) -> None:
        """Returns once the transport takes frames again; raises ``ClientDisconnected`` when it never will."""


def frame_writer(scope: Any) -> FrameWriter | None:
    """The socket's ``FrameWriter`` when the server is ``LeanWebSocketProtocol`` (else: ASGI sends)."""
    extensions = scope.get("extensions")
    return None if extensions is None else extensions.get(FRAMES)


def text_frame(payload: bytes) -> bytes:
    """A whole, unmasked server text frame of ``payload`` (UTF-8), as RFC 6455 section 5.2 lays it out."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Inbox:
    """The ASGI receive events of one socket: usually none (reads pause after each message)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[Any] | None = None
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.items is None:
            self.items = [item]
        else:
            self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def empty(self) -> bool:
        return not self.items

    async def get(self) -> Any:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        item = self.items.pop(0)
        if not self.items:
            self.items = None
        return item


class LeanWebSocketProtocol(asyncio.Protocol):
    """uvicorn's ``websockets-sansio`` protocol (uvicorn 0.54) with the changes of the module docstring."""

    __slots__ = (
        "app",
        "app_state",
        "client",
        "close_sent",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "disconnected",
        "frames",
        "handshake_complete",
        "initial_response",
        "last_ping_rtt",
        "loop",
        "paused",
        "pending_ping_payload",
        "ping_sent_at",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "response",
        "scope",
        "server_state",
        "transport",
        "writable_waiter",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.app_state = app_state
        self.server_state = server_state
        self.connections = server_state.connections
        self.transport: Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.scope: Any = None
        self.response: Response | None = None  # between the handshake request and the app's answer
        self.queue = _Inbox()
        self.close_sent = False
        self.disconnected = False
        self.handshake_complete = False
        self.close_timer: TimerHandle | None = None
        self.initial_response: tuple[int, list[tuple[str, str]], bytes] | None = None
        extensions = []
        if config.ws_per_message_deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
                )
            ]
        self.conn = ServerProtocol(extensions=extensions, max_size=config.ws_max_size, logger=_log)
        self.read_paused = False
        self.paused = False  # the transport's buffer is above its high-water mark
        self.writable_waiter: asyncio.Future[None] | None = None
        self.ping_timer: TimerHandle | None = None
        self.pong_timer: TimerHandle | None = None
        self.pending_ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames: list[bytes] | None = None
        self.curr_msg_data_type: Literal["text", "bytes"] = "bytes"

    # --- FrameWriter -------------------------------------------------------------------------------------
    def write_frame(self, frame: bytes) -> bool:
        if self.paused or self.close_sent or self.disconnected:
            return False
        self.transport.write(frame)
        return True

    async def drained(self) -> None:
        await self._writable()
        if self.disconnected or self.close_sent:
            raise ClientDisconnected()

    async def _writable(self) -> None:
        while self.paused and not self.disconnected:
            if self.writable_waiter is None:
                self.writable_waiter = self.loop.create_future()
            # Shielded: a waiter cancelled (a close that timed out) must not cancel the others' future.
            await asyncio.shield(self.writable_waiter)

    def _set_writable(self) -> None:
        self.paused = False
        waiter, self.writable_waiter = self.writable_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: BaseTransport) -> None:
        self.transport = cast(Transport, transport)
        self.connections.add(self)  # type: ignore[arg-type]
        self.client = get_remote_addr(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_keepalive()
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": 1005 if self.handshake_complete else 1006}
        )
        self.connections.discard(self)
        self.handshake_complete = True
        self.disconnected = True
        # A send or drained() waiting on a paused transport: asyncio never resumes a lost one.
        self._set_writable()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        self.paused = True  # pragma: full coverage

    def resume_writing(self) -> None:
        self._set_writable()  # pragma: full coverage

    def shutdown(self) -> None:
        self.stop_keepalive()
        if self.close_sent:
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
            return
        if self.handshake_complete:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1012})
            self.conn.send_close(1012)
            self._flush()
        else:
            self.send_500_response()
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        if self.conn.parser_exc is not None:  # pragma: no cover
            self.handle_parser_exception()
            return
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self.handle_connect(event)
            elif isinstance(event, Frame):
                opcode = event.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    self.curr_msg_data_type = "text" if opcode is Opcode.TEXT else "bytes"
                    self.frames = [event.data]  # type: ignore[list-item]
                    if event.fin:
                        self.send_receive_event_to_app()
                elif opcode is Opcode.CONT:  # pragma: no cover
                    if self.frames is not None:
                        self.frames.append(event.data)  # type: ignore[arg-type]
                    if event.fin:
                        self.send_receive_event_to_app()
                elif opcode is Opcode.PING:
                    self._flush()  # the pong websockets queued
                elif opcode is Opcode.PONG:
                    self.handle_pong(event)
                elif opcode is Opcode.CLOSE:
                    self.handle_close()

    def _flush(self) -> None:
        self.transport.write(b"".join(self.conn.data_to_send()))

    # --- events ----------------------------------------------------------------------------------------
    def handle_connect(self, event: Request) -> None:
        self.response = response = self.conn.accept(event)
        if response.status_code != 101:
            self.handshake_complete = True
            self.close_sent = True
            self.conn.send_response(response)
            self._flush()
            self.transport.close()
            return
        headers = [(key.encode("ascii"), value.encode("latin-1")) for key, value in event.headers.raw_items()]
        raw_path, _, query_string = event.path.partition("?")
        subprotocols: list[str] = []
        for header in event.headers.get_all("Sec-WebSocket-Protocol"):
            subprotocols.extend([token.strip() for token in header.split(",")])
        config = self.config
        self.scope = {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(self.transport) else "ws",
            "server": get_local_addr(self.transport),
            "client": self.client,
            "root_path": config.root_path,
            "path": config.root_path + unquote(raw_path),
            "raw_path": config.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}, FRAMES: self},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _forget_request(self) -> None:
        """The handshake's parser (a generator) holds the request, headers included, in its frame for as
        long as the socket lives: from the 101 on, frames are parsed by a fresh frame parser instead. The
        client sends nothing before the 101 (it waits for it), so nothing is half parsed here; if it did,
        the old parser is kept."""
        conn = self.conn
        if conn.reader.buffer or conn.events:
            return
        parser = SansIOProtocol.parse(conn)
        next(parser)  # start the coroutine, as websockets does
        conn.parser = parser

    def send_receive_event_to_app(self) -> None:
        frames = self.frames or [b""]
        self.frames = None
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.close_sent:
            return  # past websocket.close: reads stay active until the peer's close reply arrives
        if self.curr_msg_data_type == "text":
            try:
                self.queue.put_nowait({"type": "websocket.receive", "text": data.decode()})
            except UnicodeDecodeError:  # pragma: no cover
                _log.exception("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_pong(self, event: Frame) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return  # pragma: no cover
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        if self.pong_timer is not None:
            self.pong_timer.cancel()
            self.pong_timer = None
            self.schedule_ping()

    def start_keepalive(self) -> None:
        interval = self.config.ws_ping_interval
        if interval is not None and interval > 0:
            self.schedule_ping()

    def stop_keepalive(self) -> None:
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        if self.pong_timer is not None:  # pragma: no cover
            self.pong_timer.cancel()
            self.pong_timer = None
        self.pending_ping_payload = None

    def schedule_ping(self) -> None:
        interval = self.config.ws_ping_interval
        assert interval is not None
        self.ping_timer = self.loop.call_later(
            max(0.0, interval - self.last_ping_rtt), self.send_keepalive_ping
        )

    def send_keepalive_ping(self) -> None:
        self.ping_timer = None
        if self.close_sent or self.transport.is_closing():  # pragma: no cover
            return
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self._flush()
        if self.config.ws_ping_timeout is not None:
            self.pong_timer = self.loop.call_later(self.config.ws_ping_timeout, self.keepalive_timeout)
        else:  # pragma: no cover
            self.schedule_ping()

    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():  # pragma: no cover
            return
        self.conn.fail(1011, "keepalive ping timeout")
        self._flush()
        self.close_sent = True
        self.transport.close()

    def handle_close(self) -> None:
        if self.close_sent:
            # The peer echoed our close frame: the closing handshake is complete.
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
                self.transport.close()
            return
        if not self.transport.is_closing():
            assert self.conn.close_rcvd is not None
            code, reason = self.conn.close_rcvd.code, self.conn.close_rcvd.reason
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self._flush()
            self.transport.close()

    def handle_parser_exception(self) -> None:  # pragma: no cover
        assert self.conn.close_sent is not None
        code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._flush()
        self.close_sent = True
        self.transport.close()

    async def run_asgi(self) -> None:
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass  # pragma: full coverage
        except BaseException:
            _log.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                _log.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                _log.error("ASGI callable should return None, but returned '%s'.", result)
        if self.close_timer is None:
            self.transport.close()

    def send_500_response(self) -> None:
        if self.initial_response or self.handshake_complete:
            return
        self.conn.send_response(self.conn.reject(500, "Internal Server Error"))
        self._flush()

    # --- ASGI ------------------------------------------------------------------------------------------
    async def send(self, message: Any) -> None:
        if self.paused:
            await self._writable()
        if self.disconnected:
            raise ClientDisconnected()
        kind = message["type"]
        if not self.handshake_complete and self.initial_response is None:
            self._handshake_answer(message)
        elif not self.close_sent and self.initial_response is None:
            try:
                if kind == "websocket.send":
                    if (data := message.get("bytes")) is not None:
                        self.conn.send_binary(data)
                        self._flush()
                    elif (text := message.get("text")) is not None:
                        if self.conn.state is not OPEN:
                            raise InvalidState("the connection is not open")
                        if self.conn.extensions:  # pragma: no cover - deflate is declined by uvicorn_options
                            self.conn.send_text(text.encode())
                            self._flush()
                        else:
                            self.transport.write(text_frame(text.encode()))
                elif kind == "websocket.close":
                    if not self.transport.is_closing():
                        code = message.get("code", 1000)
                        reason = message.get("reason", "") or ""
                        self.queue.put_nowait(
                            {"type": "websocket.disconnect", "code": code, "reason": reason}
                        )
                        self.conn.send_close(code, reason)
                        self._flush()
                        self.close_sent = True
                        if self.read_paused:
                            self.read_paused = False
                            self.transport.resume_reading()
                        self.close_timer = self.loop.call_later(_CLOSE_TIMEOUT, self.transport.close)
                else:
                    raise RuntimeError(
                        f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'."
                    )
            except InvalidState:
                raise ClientDisconnected() from None
        elif self.initial_response is not None:
            self._denial_body(message)
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")

    def _handshake_answer(self, message: Any) -> None:
        kind = message["type"]
        response = self.response
        assert response is not None
        if kind == "websocket.accept":
            headers = [
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in (self.server_state.default_headers + list(message.get("headers", [])))
            ]
            if subprotocol := message.get("subprotocol"):
                headers.append(("Sec-WebSocket-Protocol", subprotocol))
            del response.headers["Date"]
            response.headers.update(headers)
            if not self.transport.is_closing():
                self.handshake_complete = True
                self.conn.send_response(response)
                self._flush()
                self.start_keepalive()
                self._forget_request()
            self.response = None
        elif kind == "websocket.close":
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
            self.conn.send_response(self.conn.reject(HTTPStatus.FORBIDDEN, ""))
            self.close_sent = True
            self.handshake_complete = True
            self.response = None
            self._flush()
            self.transport.close()
        elif kind == "websocket.http.response.start" and self.initial_response is None:
            if not (100 <= message["status"] < 600):
                raise RuntimeError(f"Invalid HTTP status code '{message['status']}' in response.")
            headers = [
                (n.decode("latin-1"), v.decode("latin-1")) for n, v in list(message.get("headers", []))
            ]
            self.initial_response = (message["status"], headers, b"")
            self.response = None
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.accept', 'websocket.close' "
                f"or 'websocket.http.response.start' but got '{kind}'."
            )

    def _denial_body(self, message: Any) -> None:
        assert self.initial_response is not None
        if message["type"] != "websocket.http.response.body":  # pragma: no cover
            raise RuntimeError(
                f"Expected ASGI message 'websocket.http.response.body' but got '{message['type']}'."
            )
        body = self.initial_response[2] + message["body"]
        self.initial_response = (*self.initial_response[:2], body)
        if message.get("more_body", False):
            return
        status = self.initial_response[0]
        headers = Headers(self.initial_response[1])
        headers.setdefault("Date", email.utils.formatdate(usegmt=True))
        headers.setdefault("Connection", "close")
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.conn.send_response(Response(status, _status_phrase(status), headers, body))
        self.close_sent = True
        self._flush()
        self.transport.close()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message
