"""Notification consumer service: turns queued notifications into pushes to devices."""

from __future__ import annotations

from litestar import Litestar

from chat_core.backends import Backends
from chat_core.service import ServiceParts, create_service_app
from chat_core.settings import Settings

COMPONENT = "notification-consumer"


def build(settings: Settings, backends: Backends) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``."""
    return ServiceParts(component=COMPONENT, description="turns queued notifications into pushes to devices.")


def create_app(settings: Settings, backends: Backends | None = None) -> Litestar:
    backends = backends or Backends(settings)
    return create_service_app(
        settings,
        backends,
        [build(settings, backends)],
        component=COMPONENT,
        title="chat-management notification-consumer",
    )
