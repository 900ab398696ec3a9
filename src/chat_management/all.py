"""The all-in-one process: the five services on one server, sharing one composition root.

Like Loki's or Tempo's monolithic target: what ``make run`` starts, with the embedded adapters by default,
and the web client at ``/``.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Litestar

import image_proxy.app
import media_processor.app
import message_service.app
import notification_consumer.app
import upload_service.app
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from chat_core.settings import Settings
from chat_management import webclient

COMPONENT = "all"
SERVICES = {
    upload_service.app.COMPONENT: upload_service.app,
    message_service.app.COMPONENT: message_service.app,
    image_proxy.app.COMPONENT: image_proxy.app,
    notification_consumer.app.COMPONENT: notification_consumer.app,
    media_processor.app.COMPONENT: media_processor.app,
}


def create_combined_app(
    names: Sequence[str], settings: Settings, root: Composition | None = None
) -> Litestar:
    """Several services in one process (`serve message upload`), labelled as the first one.

    For routers without regex path matches (GKE's Gateway): the upload route shares the /conversations
    prefix with the message service, so the pods that get /conversations serve both.
    """
    root = root or Composition(settings)
    parts = [build(name, settings, root) for name in names]
    return create_service_app(settings, root, parts, component=names[0], title=" + ".join(names))


def build(name: str, settings: Settings, root: Composition) -> ServiceParts:
    """Service ``name``'s parts, on the ports it picks from ``root`` (shared by every service here)."""
    module = SERVICES[name]
    parts: ServiceParts = module.build(settings, module.ports(root))
    return parts


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    root = root or Composition(settings)
    parts = [build(name, settings, root) for name in SERVICES]
    parts.append(webclient.build(settings))  # the web client at `/`
    return create_service_app(
        settings,
        root,
        parts,
        component=COMPONENT,
        title="chat-management",
        description="Image messages for a chat app: upload URLs, messages, real-time events, image proxy.",
    )
