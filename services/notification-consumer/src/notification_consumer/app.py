"""Notification consumer service: turns queued notifications into pushes to devices.

No public API: the worker runs in the lifespan of a small app that serves ``/healthz``, ``/readyz`` (the
queue, the message store and the push provider answer) and ``/metrics``. In the all-in-one process the
worker runs beside the other services.
"""

from __future__ import annotations

from litestar import Litestar

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.backends import Backends
from chat_core.settings import Settings
from notification_consumer.consumer import NotificationConsumer

COMPONENT = "notification-consumer"


def build(settings: Settings, backends: Backends) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``."""
    consumer = NotificationConsumer.from_backends(settings, backends)
    return ServiceParts(
        component=COMPONENT,
        essential=("notification_queue", "message_store"),
        workers=[consumer.worker],
        description="turns queued notifications into pushes to devices.",
    )


def create_app(settings: Settings, backends: Backends | None = None) -> Litestar:
    backends = backends or Backends(settings)
    return create_service_app(
        settings,
        backends,
        [build(settings, backends)],
        component=COMPONENT,
        title="chat-management notification-consumer",
    )
