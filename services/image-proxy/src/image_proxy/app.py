"""Image proxy service: serves images to conversation members only."""

from __future__ import annotations

from litestar import Litestar
from litestar.di import Provide

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from chat_core.push.image_links import push_image_links
from chat_core.settings import Settings
from image_proxy.ports import ProxyPorts
from image_proxy.routes import get_image, hot_get_image
from image_proxy.service import ImageProxy

COMPONENT = "image-proxy"


def ports(root: Composition) -> ProxyPorts:
    """This service's ports, picked from the process's composition root."""
    return ProxyPorts(
        object_store=root.object_store,
        messages=root.messages,
        membership=root.membership,
        event_bus=root.event_bus,
        verifier=root.verifier,
    )


def build(settings: Settings, ports: ProxyPorts) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``ports``."""
    membership, bus = ports.membership, ports.event_bus
    proxy = ImageProxy(
        settings.images,
        settings.media,
        cookie_name=settings.auth.cookie_name,
        push_links=push_image_links(settings),
        verifier=ports.verifier,
        store=ports.object_store,
        messages=ports.messages,
        membership=membership,
    )
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store", "object_store"),
        route_handlers=[get_image],
        hot_routes=[hot_get_image(proxy)],
        dependencies={"image_proxy": Provide(lambda: proxy, use_cache=True, sync_to_thread=False)},
        workers=[*membership.workers(bus), proxy.waits.running, lambda: proxy.deletions_worker(bus)],
        description="serves images to conversation members only.",
    )


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    root = root or Composition(settings)
    return create_service_app(
        settings,
        root,
        [build(settings, ports(root))],
        component=COMPONENT,
        title="chat-management image-proxy",
    )
