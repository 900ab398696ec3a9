"""Image proxy service: serves images to conversation members only."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.backends import Backends
from chat_core.membership import MembershipCache
from chat_core.settings import Settings
from image_proxy.routes import get_image
from image_proxy.service import ImageProxy

COMPONENT = "image-proxy"


def build(settings: Settings, backends: Backends) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``."""
    membership = MembershipCache.of(backends)
    proxy = ImageProxy(settings, backends, backends.object_store, backends.messages, membership)
    bus = backends.event_bus  # asked for now: Backends builds adapters before start-up only
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store", "object_store"),
        route_handlers=[get_image],
        dependencies={"image_proxy": Provide(lambda: proxy, use_cache=True, sync_to_thread=False)},
        workers=[*membership.workers(backends), proxy.waits.running, lambda: proxy.deletions_worker(bus)],
        description="serves images to conversation members only.",
    )


def create_app(settings: Settings, backends: Backends | None = None) -> Litestar:
    backends = backends or Backends(settings)
    return create_service_app(
        settings,
        backends,
        [build(settings, backends)],
        component=COMPONENT,
        title="chat-management image-proxy",
    )
