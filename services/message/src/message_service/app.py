"""Message service: conversations, members, messages, devices and the real-time socket."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from litestar import Litestar
from litestar.di import Provide

from chat_core import keys
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.backends import Backends
from chat_core.erasure import ImageEraser
from chat_core.openapi import DocumentRefinement, constrain
from chat_core.settings import Settings
from message_service import admin, devices, routes
from message_service.admin import AdminJobs
from message_service.devices import DeviceService
from message_service.events import MessageEvents
from message_service.fanout import Fanout
from message_service.last_message import LastMessageWriter
from message_service.lifecycle import Lifecycle
from message_service.realtime import RealtimeSockets
from message_service.service import ConversationService, MessageService
from message_service.verification import ImageVerifier

COMPONENT = "message"
_log = structlog.get_logger("message_service")


def _message_union(document: dict[str, Any]) -> None:
    """``Message`` as the discriminated union it is: a text message has no metadata, an image message
    has its image's. Derived from the stored struct's schema, so fields added to it show in both."""
    schemas = document["components"]["schemas"]
    message = schemas.get("Message")
    if message is None or "properties" not in message:
        return
    shapes = {"text": ("TextMessage", {"type": "null"}), "image": ("ImageMessage", None)}
    for kind, (name, metadata) in shapes.items():
        shape = copy.deepcopy(message)
        shape["title"] = name
        shape["properties"]["messageType"] = {"enum": [kind]}
        if metadata is not None:
            shape["properties"]["metadata"] = metadata
        elif "deleted" not in shape["properties"]:  # a deleted image message keeps `metadata: null`
            branches = shape["properties"]["metadata"].get("anyOf", [])
            shape["properties"]["metadata"] = next(b for b in branches if b.get("type") != "null")
            shape["required"] = sorted({*shape.get("required", []), "metadata"})
        schemas[name] = shape
    schemas["Message"] = {
        "title": "Message",
        "description": message.get("description", ""),
        "oneOf": [{"$ref": f"#/components/schemas/{name}"} for name, _ in shapes.values()],
        "discriminator": {
            "propertyName": "messageType",
            "mapping": {kind: f"#/components/schemas/{name}" for kind, (name, _) in shapes.items()},
        },
    }


def _album_shapes(document: dict[str, Any], max_images: int) -> None:
    """An image message's metadata is one image or an album, never a mix: ``oneOf`` the two (the decoder
    takes a struct with both sets of fields; the service refuses a mix with ``invalid_album``)."""
    schemas = document["components"]["schemas"]
    request = schemas.get("ImageMetadataRequest")
    if request is None or "properties" not in request:
        return
    images = copy.deepcopy(request["properties"]["images"])
    album = next(b for b in images.get("anyOf", [images]) if b.get("type") == "array")
    album["maxItems"] = max_images
    schemas["ImageMetadataRequest"] = {
        "title": "ImageMetadataRequest",
        "description": request.get("description", ""),
        "oneOf": [
            {
                "title": "OneImage",
                "allOf": [{"$ref": "#/components/schemas/ImageRequest"}],
                "not": {"required": ["images"]},
            },
            {
                "title": "Album",
                "type": "object",
                "properties": {"images": album},
                "required": ["images"],
                "additionalProperties": False,
            },
        ],
    }
    stored = schemas.get("ImageMetadata", {}).get("properties", {}).get("images")
    if stored is not None:
        stored.update(
            minItems=2,
            maxItems=max_images,
            description="An album's images in order, each with its own status, variants and BlurHash "
            "(absent for one image). The album's other fields repeat its first image's.",
        )


def document_refinement(settings: Settings) -> DocumentRefinement:
    """The accepted image types and the album limit (settings), and the message shapes as a
    discriminated union."""
    allowed = frozenset(settings.images.allowed_types) & keys.EXTENSIONS.keys()

    def refine(document: dict[str, Any]) -> None:
        constrain(document, "ImageRequest", "content_type", pattern=keys.content_type_pattern(allowed))
        _album_shapes(document, settings.images.max_images_per_message)
        _message_union(document)

    return refine


def build(settings: Settings, backends: Backends, events: MessageEvents | None = None) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``.

    ``events`` is the fan-out after a change is stored (publish, notifications, membership events; see
    ``events.py``); tests pass their own.
    """
    last_messages = LastMessageWriter(backends.conversations, leases=backends.write_leases)
    fanout: Fanout | None = None
    if events is None:
        events = fanout = Fanout(
            backends.conversations,
            backends.outbox,
            backends.event_bus,
            backends.presence,
            backends.notification_queue,
            media_queue=backends.media_queue,
            eraser=ImageEraser(backends.object_store, backends.storage_ledger),
            drain_seconds=settings.service.drain_seconds,
        )
    sockets = RealtimeSockets.from_backends(settings, backends)
    device_service = DeviceService(backends.devices, max_devices=settings.limits.max_devices_per_user)
    conversations = ConversationService(backends.conversations, events)
    messages = MessageService(
        backends.conversations,
        backends.messages,
        ImageVerifier(settings, backends.object_store),
        last_messages,
        events,
        backends.quotas,
        edit_window_seconds=settings.lifecycle.edit_window_seconds,
        objects=backends.object_store,
        storage=backends.storage_ledger,
        base_url=settings.service.base_url(),
        max_images=settings.images.max_images_per_message,
        limiter=backends.rate_limiter,
    )
    lifecycle = Lifecycle(
        backends.conversations,
        backends.messages,
        backends.devices,
        backends.object_store,
        events,
        conversations,
        retention_days=settings.lifecycle.retention_days,
        quotas=backends.quotas,
    )
    admin_jobs = AdminJobs(
        backends.object_store,
        lifecycle,
        admin_role=settings.auth.admin_role,
        url_ttl_seconds=settings.lifecycle.export_url_ttl_seconds,
    )
    retention = [retention_worker(lifecycle, settings.lifecycle.retention_interval_seconds)]
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store",),
        route_handlers=[*routes.ROUTES, *devices.ROUTES, *admin.ROUTES, sockets.route_handler()],
        dependencies={
            "conversation_service": Provide(lambda: conversations, use_cache=True, sync_to_thread=False),
            "message_service": Provide(lambda: messages, use_cache=True, sync_to_thread=False),
            "device_service": Provide(lambda: device_service, use_cache=True, sync_to_thread=False),
            "admin_jobs": Provide(lambda: admin_jobs, use_cache=True, sync_to_thread=False),
        },
        workers=[
            last_messages.worker,
            *([fanout.worker] if fanout is not None else []),
            admin_jobs.worker,
            *(retention if settings.lifecycle.retention_interval_seconds else []),
        ],
        description="conversations, members, messages, devices and the real-time socket.",
        document=[document_refinement(settings)],
    )


@contextlib.asynccontextmanager
async def standalone_lifecycle(settings: Settings) -> AsyncIterator[Lifecycle]:
    """The lifecycle jobs outside a server (the CLI): backends started, the fan-out's relay running, so
    events and byte deletions go out at once; what is left when it closes stays in the outbox for the
    message service's relay."""
    backends = Backends(settings)
    fanout = Fanout(
        backends.conversations,
        backends.outbox,
        backends.event_bus,
        backends.presence,
        backends.notification_queue,
        media_queue=backends.media_queue,
        eraser=ImageEraser(backends.object_store, backends.storage_ledger),
        drain_seconds=settings.service.drain_seconds,
    )
    # Every port is asked for before start-up (Backends builds adapters then only).
    lifecycle = Lifecycle(
        backends.conversations,
        backends.messages,
        backends.devices,
        backends.object_store,
        fanout,
        ConversationService(backends.conversations, fanout),
        retention_days=settings.lifecycle.retention_days,
        quotas=backends.quotas,
    )
    async with backends, fanout.worker():
        yield lifecycle


def retention_worker(
    lifecycle: Lifecycle, interval: float
) -> Callable[[], AbstractAsyncContextManager[None]]:
    """A retention pass every ``interval`` seconds during the service's lifespan (each replica: a pass
    that finds nothing to delete costs reads only, and a message deleted twice is deleted once)."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await lifecycle.apply_retention()
                except Exception as exc:
                    _log.warning("retention_failed", error=repr(exc))

        task = asyncio.create_task(loop(), name="retention")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return run


def create_app(
    settings: Settings, backends: Backends | None = None, events: MessageEvents | None = None
) -> Litestar:
    backends = backends or Backends(settings)
    return create_service_app(
        settings,
        backends,
        [build(settings, backends, events)],
        component=COMPONENT,
        title="chat-management message",
    )
