"""Notification consumer service: turns queued notifications into pushes to devices.

No public API: the worker runs in the lifespan of a small app that serves ``/healthz``, ``/readyz`` (the
queue, the message store and the push provider answer) and ``/metrics``. In the all-in-one process the
worker runs beside the other services.
"""

from __future__ import annotations

from litestar import Litestar

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from chat_core.settings import Settings
from notification_consumer.consumer import NotificationConsumer
from notification_consumer.ports import NotificationPorts

COMPONENT = "notification-consumer"


def ports(root: Composition) -> NotificationPorts:
    """This service's ports, picked from the process's composition root."""
    return NotificationPorts(
        notification_queue=root.notification_queue,
        devices=root.devices,
        push_receipts=root.push_receipts,
        push_provider=root.push_provider,
        messages=root.messages,
        conversations=root.conversations,
    )


def build(settings: Settings, ports: NotificationPorts) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``ports``."""
    consumer = NotificationConsumer.from_ports(settings, ports)
    return ServiceParts(
        component=COMPONENT,
        essential=("notification_queue", "message_store"),
        workers=[consumer.worker],
        description="turns queued notifications into pushes to devices.",
    )


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    root = root or Composition(settings)
    return create_service_app(
        settings,
        root,
        [build(settings, ports(root))],
        component=COMPONENT,
        title="chat-management notification-consumer",
    )
