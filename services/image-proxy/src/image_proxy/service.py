"""Serving an image to the members of its conversation, and writing down every attempt.

Checks run cheapest first and nothing malformed reaches a store: the token (401), the conversation id and
the key's layout (404 ``conversation_not_found`` for a malformed id, 400 for a malformed key), membership
(the lib's one decision: 404 ``conversation_not_found``, the same for a conversation that does not exist,
so a non-member learns nothing), then the message the image belongs to (404 ``image_not_found``). One
audit line (``chat_core.audit``, never silenced by LOG_LEVEL) and one metric per request, whatever the
outcome.

The raw upload is never served: ``url`` serves the sanitized ``original`` the media processor wrote,
``?variant=thumbnail|preview`` the variants (``{cid}/media/{messageId}/{variant}.{ext}``). While the
image is processing the proxy waits up to ``MEDIA_WAIT_SECONDS`` (one poll of the store per image, however
many requests wait on it: ``image_proxy.waits``), then answers 503 ``image_processing`` with
``Retry-After``; a failed image is 422 ``image_unavailable`` with its reason. Derivatives never change,
so their responses say ``immutable``; the redirect itself stays signed per window, so a viewer gets the
same URL within one.

A push's thumbnail link (``chat_core.push.image_links``: ``?variant=thumbnail&push_user=&push_expires=
&push_signature=``) stands in for the token: it serves that one thumbnail to the recipient it was signed
for, while they are a member, until it expires (403 ``push_link_invalid`` / ``push_link_expired``), and is
audited in the recipient's name with ``via=push_link``.

A deleted message's image is 404 ``message_deleted``. Finished images are remembered per process, so a
deletion must reach every replica: the message service's relay publishes it on ``DELETIONS_CHANNEL``
before it deletes any byte, and each proxy drops the message at once (a gap in that subscription, or
none yet, forgets everything remembered). A signed URL handed out before the deletion fails as soon as
the bytes are gone (seconds), and in any case when its window ends (at most two
``IMAGE_URL_WINDOW_SECONDS``); a browser keeps what it already downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import structlog
from litestar import Request, Response

from chat_core import keys, metrics
from chat_core.app_factory import authenticate
from chat_core.audit import audit
from chat_core.auth import TokenVerifier
from chat_core.chatstore import Message, MessageStore, albums
from chat_core.errors import ProblemError
from chat_core.membership import MembershipCache, conversation_not_found
from chat_core.objectstore import ObjectNotFound, ObjectStore, RangeNotSatisfiable
from chat_core.objectstore.serving import serve_object
from chat_core.push.image_links import PushImageLinks
from chat_core.realtime import DELETIONS_CHANNEL, EventBus, Subscription
from chat_core.realtime.events import decode_message_gone
from chat_core.settings import ImageSettings, MediaSettings
from image_proxy.waits import ProcessingWaits, finished

__all__ = ["ImageProxy"]

_log = structlog.get_logger("image_proxy")
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
# The answer depends on who asks: a shared browser must not hand one user's answer to the next.
VARY = "Authorization, Cookie"
# Failures that happen after access was granted (the member asked for something that is not there).
_AFTER_GRANT = frozenset(
    {
        "image_not_found",
        "range_not_satisfiable",
        "image_processing",
        "image_unavailable",
        "invalid_variant",
        "message_deleted",
    }
)
RESUBSCRIBE_SECONDS = 5.0
RETRY_AFTER_SECONDS = 2
IMMUTABLE_MAX_AGE = 365 * 24 * 3600  # derivatives never change under their key
_MAX_LOGGED = 300
_SEEN_MAX = 50_000  # finished images remembered (their messages: a few tens of MB at most)
_SIGNED_MAX = 50_000  # signed redirect URLs of the current window (~300 bytes each)
_OVERRIDES = {"Cache-Control": f"private, max-age={IMMUTABLE_MAX_AGE}, immutable"}


class ImageProxy:
    def __init__(
        self,
        images: ImageSettings,
        media: MediaSettings,
        *,
        cookie_name: str,
        push_links: PushImageLinks | None,
        verifier: TokenVerifier,
        store: ObjectStore,
        messages: MessageStore,
        membership: MembershipCache,
    ) -> None:
        self._verifier = verifier
        self._cookie_name = cookie_name
        self._store = store
        self._membership = membership
        self._mode = images.proxy_mode
        self._window = images.proxy_url_window_seconds
        self._safe_types = frozenset(keys.DERIVATIVE_EXTENSIONS)  # what the media processor writes
        # A ready or failed image never changes: one lookup per image (per process) is enough, so a
        # chat screen's repeated views, and a group's many viewers, then cost no store round trip.
        self._messages = messages
        self._wait_seconds = media.wait_seconds
        self._waits = ProcessingWaits(max_waiters=media.max_waiters)
        self._finished: OrderedDict[str, Message] = OrderedDict()
        # message id -> its keys in ``_finished`` (an album's: one per image asked for)
        self._stored_key_of: dict[str, set[str]] = {}
        self._listening = False  # deletions are heard (else nothing is remembered)
        self._push_links = push_links
        self._signed: dict[str, str] = {}  # derivative key -> its redirect URL, for ``_signed_window``
        self._signed_window = -1
        self._counters: dict[tuple[str, str], Any] = {}

    @property
    def waits(self) -> ProcessingWaits:
        return self._waits

    async def serve(
        self, request: Request[Any, Any, Any], conversation_id: str, raw_key: str
    ) -> Response[Any]:
        object_key = raw_key.removeprefix("/")
        user_id: str | None = None
        via = "push_link" if "push_signature" in request.query_params else "token"
        try:
            if via == "push_link":
                user_id = self._push_link_user(request, conversation_id, object_key)
            else:
                # the bearer token, or its cookie (``<img>`` tags cannot send headers)
                principal = await authenticate(request, self._verifier, cookie_name=self._cookie_name)
                user_id = principal.user_id
            response, reason = await self._authorised(request, user_id, conversation_id, object_key)
        except ProblemError as exc:
            decision = "allowed" if exc.code in _AFTER_GRANT else "denied"
            self._record(request, user_id, conversation_id, object_key, decision, exc.code, exc.status, via)
            exc.headers.update(NOSNIFF)
            raise
        except Exception:
            _log.exception("image_proxy_failed", conversation_id=conversation_id, object_key=object_key)
            self._record(request, user_id, conversation_id, object_key, "allowed", "backend_error", 503, via)
            raise ProblemError(
                503, "storage_unavailable", "the image could not be fetched; retry shortly", headers=NOSNIFF
            ) from None
        response.headers.update(NOSNIFF)
        self._record(
            request, user_id, conversation_id, object_key, "allowed", reason, response.status_code or 200, via
        )
        return response

    def _push_link_user(self, request: Request[Any, Any, Any], conversation_id: str, object_key: str) -> str:
        """The recipient a push's thumbnail link was signed for (its token stand-in), or a 403."""
        if self._push_links is None:
            raise ProblemError(403, "push_link_invalid", "this image link is not valid")
        return self._push_links.verify(conversation_id, object_key, request.query_params)

    async def _authorised(
        self, request: Request[Any, Any, Any], user_id: str, conversation_id: str, object_key: str
    ) -> tuple[Response[Any], str]:
        if not keys.CONVERSATION_ID_PATTERN.fullmatch(conversation_id):
            raise conversation_not_found()
        try:
            stored = keys.stored_key(conversation_id, object_key)
        except keys.InvalidKey as exc:
            raise ProblemError(400, "invalid_object_key", str(exc)) from None
        await self._membership.require(conversation_id, user_id)
        served = await self._served_key(request, conversation_id, stored)
        if self._mode == "redirect":
            return await self._redirect(served), "redirect"
        return await self._stream(request, served)

    async def _served_key(self, request: Request[Any, Any, Any], conversation_id: str, stored: str) -> str:
        """The derivative a request for ``stored`` gets: never the raw upload."""
        variant = request.query_params.get("variant") or "original"
        if variant not in keys.VARIANTS:
            raise ProblemError(
                400, "invalid_variant", f"variant must be one of {', '.join(v for v in keys.VARIANTS[1:])}"
            )
        message = await self._image_message(conversation_id, stored)
        if message is not None and message.deleted:
            raise ProblemError(404, "message_deleted", "the message this image belonged to was deleted")
        index, metadata = albums.image_for_stored_key(message.metadata if message else None, stored)
        if message is None or metadata is None:
            raise ProblemError(404, "image_not_found", "no such image in this conversation")
        if metadata.status == "failed":
            reason = metadata.error or "failed"
            raise ProblemError(
                422,
                "image_unavailable",
                f"the image could not be processed ({reason})",
                extra={"reason": reason},
            )
        if variant == "original":
            content_type = metadata.content_type
        else:
            if metadata.variants is None:
                raise ProblemError(404, "image_not_found", "no such image in this conversation")
            content_type = getattr(metadata.variants, variant).content_type
        return keys.derivative_key(conversation_id, message.message_id, variant, content_type, index)

    async def _image_message(self, conversation_id: str, stored: str) -> Message | None:
        """The message ``stored`` backs, waiting up to MEDIA_WAIT_SECONDS while it is processing.

        Finished messages never change, so they are remembered. A processing one is asked again with a
        growing interval (0.1 s doubling to 1 s) by one poll per image that every request for it waits on
        (``image_proxy.waits``); past ``MEDIA_MAX_WAITERS`` waiting requests, a request does not wait.
        """
        cached = self._finished.get(stored)
        if cached is not None:
            self._finished.move_to_end(stored)
            return cached
        message, waited = await self._waits.wait(
            stored, lambda: self._messages.image_message(conversation_id, stored), self._wait_seconds
        )
        if not finished(message, stored):
            raise ProblemError(
                503,
                "image_processing",
                "the image is still being processed; retry shortly"
                if waited
                else "the image is still being processed, and too many requests wait already; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if message is not None and self._listening:
            self._finished[stored] = message
            self._stored_key_of.setdefault(message.message_id, set()).add(stored)
            if len(self._finished) > _SEEN_MAX:
                evicted_key, evicted = self._finished.popitem(last=False)
                held = self._stored_key_of.get(evicted.message_id)
                if held is not None:
                    held.discard(evicted_key)
                    if not held:
                        del self._stored_key_of[evicted.message_id]
        return message

    # --- deletions from other processes ------------------------------------------------------------
    def forget(self, message_id: str) -> None:
        """Drop what is remembered of ``message_id``: its next request reads the store."""
        for stored in self._stored_key_of.pop(message_id, set()):
            self._finished.pop(stored, None)

    def forget_all(self) -> None:
        self._finished.clear()
        self._stored_key_of.clear()

    def _on_deleted(self, _channel: str, payload: bytes) -> None:
        gone = decode_message_gone(payload)
        if gone is None:
            _log.warning("deletion_event_malformed", payload=payload[:200].decode(errors="replace"))
            return
        self.forget(gone.message_id)

    def _on_gap(self) -> None:
        # Deletions published meanwhile may be lost: nothing remembered can be trusted.
        self.forget_all()

    @contextlib.asynccontextmanager
    async def deletions_worker(self, bus: EventBus) -> AsyncIterator[None]:
        """Listen for deleted messages while open. Until the subscription is confirmed (the bus down at
        start-up) nothing is remembered, so a deletion can never be missed: each request reads the store."""
        task = asyncio.get_running_loop().create_task(self._listen(bus), name="proxy-deletions")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            subscription = task.result() if task.done() and not task.cancelled() else None
            self._listening = False
            if subscription is not None:
                with contextlib.suppress(Exception):
                    await subscription.close()

    async def _listen(self, bus: EventBus) -> Subscription:
        while True:
            try:
                subscription = await bus.subscribe([DELETIONS_CHANNEL], self._on_deleted, on_gap=self._on_gap)
            except Exception as exc:
                _log.warning("deletions_subscribe_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
                continue
            self.forget_all()
            self._listening = True
            return subscription

    async def _redirect(self, stored: str) -> Response[Any]:
        # Derivatives exist once their message is ready (they are written first) and never change.
        # Signed on the start of the current window: every request in the window gets the same URL, so
        # the browser's cache of that URL works. Valid for two windows, so a URL handed out at the end of
        # one still loads.
        # The URL is a function of (key, window) alone, so it is signed once per window and image and
        # remembered until the window ends (only ever handed out after this request's own checks).
        now = time.time()
        window_start = int(now // self._window) * self._window
        if window_start != self._signed_window or len(self._signed) >= _SIGNED_MAX:
            self._signed.clear()
            self._signed_window = window_start
        url = self._signed.get(stored)
        if url is None:
            url = self._signed[stored] = self._store.presign_get(
                stored,
                expires_in=2 * self._window,
                signed_at=dt.datetime.fromtimestamp(window_start, dt.UTC),
                response_headers=_OVERRIDES,
            )
        remaining = max(1, int(window_start + self._window - now))
        return Response(
            b"",
            status_code=302,
            headers={"Location": url, "Cache-Control": f"private, max-age={remaining}", "Vary": VARY},
        )

    async def _stream(self, request: Request[Any, Any, Any], stored: str) -> tuple[Response[Any], str]:
        headers = {"Cache-Control": f"private, max-age={IMMUTABLE_MAX_AGE}, immutable", "Vary": VARY}
        try:
            served = await serve_object(
                self._store, stored, request.headers, headers=headers, safe_types=self._safe_types
            )
        except ObjectNotFound:
            raise ProblemError(404, "image_not_found", "no such image in this conversation") from None
        except RangeNotSatisfiable as exc:
            raise ProblemError(
                416,
                "range_not_satisfiable",
                f"the image has {exc.size} bytes",
                headers={"Content-Range": f"bytes */{exc.size}"},
            ) from None
        reason = {"ok": "stream", "partial": "stream_partial", "not_modified": "not_modified"}[served.outcome]
        return served.response, reason

    def _record(
        self,
        request: Request[Any, Any, Any],
        user_id: str | None,
        conversation_id: str,
        object_key: str,
        decision: str,
        reason: str,
        status: int,
        via: str = "token",
    ) -> None:
        counter = self._counters.get((decision, reason))
        if counter is None:  # a handful of (decision, reason) pairs: each child looked up once
            counter = self._counters[(decision, reason)] = metrics.IMAGE_PROXY_REQUESTS.labels(
                decision, reason
            )
        counter.inc()
        audit(
            "image_access",
            decision=decision,
            reason=reason,
            status=status,
            user_id=user_id,
            conversation_id=conversation_id[:_MAX_LOGGED],
            object_key=object_key[:_MAX_LOGGED],
            client_ip=request.client.host if request.client else None,
            user_agent=_user_agent(request)[:_MAX_LOGGED],
            mode=self._mode,
            via=via,
        )


def _user_agent(request: Request[Any, Any, Any]) -> str:
    """The ``User-Agent``, from the raw headers (one per image view: Litestar's ``Headers`` cost more)."""
    for name, value in request.scope["headers"]:
        if name == b"user-agent":
            return value.decode("latin-1")
    return ""
