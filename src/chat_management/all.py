"""The all-in-one process: the five services on one server, sharing one set of backends.

Like Loki's or Tempo's monolithic target: what ``make run`` starts, with the embedded adapters by default.
"""

from __future__ import annotations

from litestar import Litestar

import image_proxy.app
import media_processor.app
import message_service.app
import notification_consumer.app
import upload_service.app
from chat_core.app_factory import create_service_app
from chat_core.backends import Backends
from chat_core.settings import Settings

COMPONENT = "all"
SERVICES = {
    upload_service.app.COMPONENT: upload_service.app,
    message_service.app.COMPONENT: message_service.app,
    image_proxy.app.COMPONENT: image_proxy.app,
    notification_consumer.app.COMPONENT: notification_consumer.app,
    media_processor.app.COMPONENT: media_processor.app,
}


def create_app(settings: Settings, backends: Backends | None = None) -> Litestar:
    backends = backends or Backends(settings)
    parts = [module.build(settings, backends) for module in SERVICES.values()]
    return create_service_app(
        settings,
        backends,
        parts,
        component=COMPONENT,
        title="chat-management",
        description="Image messages for a chat app: upload URLs, messages, real-time events, image proxy.",
    )
