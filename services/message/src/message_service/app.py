"""Message service: conversations, members, messages, devices and the real-time socket."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.backends import Backends
from chat_core.erasure import ImageEraser
from chat_core.settings import Settings
from message_service import devices, routes
from message_service.devices import DeviceService
from message_service.events import MessageEvents
from message_service.fanout import Fanout
from message_service.last_message import LastMessageWriter
from message_service.realtime import RealtimeSockets
from message_service.service import ConversationService, MessageService
from message_service.verification import ImageVerifier

COMPONENT = "message"


def build(settings: Settings, backends: Backends, events: MessageEvents | None = None) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``.

    ``events`` is the fan-out after a change is stored (publish, notifications, membership events; see
    ``events.py``); tests pass their own.
    """
    last_messages = LastMessageWriter(backends.conversations)
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
    device_service = DeviceService(backends.devices)
    conversations = ConversationService(backends.conversations, events)
    messages = MessageService(
        backends.conversations,
        backends.messages,
        ImageVerifier(settings, backends.object_store),
        last_messages,
        events,
        backends.quotas,
        edit_window_seconds=settings.lifecycle.edit_window_seconds,
    )
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store",),
        route_handlers=[*routes.ROUTES, *devices.ROUTES, sockets.route_handler()],
        dependencies={
            "conversation_service": Provide(lambda: conversations, use_cache=True, sync_to_thread=False),
            "message_service": Provide(lambda: messages, use_cache=True, sync_to_thread=False),
            "device_service": Provide(lambda: device_service, use_cache=True, sync_to_thread=False),
        },
        workers=[last_messages.worker, *([fanout.worker] if fanout is not None else [])],
        description="conversations, members, messages, devices and the real-time socket.",
    )


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
