"""Upload service: issues presigned upload URLs for image messages."""

from __future__ import annotations

from litestar import Litestar

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.backends import Backends
from chat_core.membership import MembershipCache
from chat_core.settings import Settings
from upload_service.routes import route_handlers
from upload_service.service import UploadService

COMPONENT = "upload"


def build(settings: Settings, backends: Backends) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``backends``."""
    membership = MembershipCache.of(backends)
    service = UploadService(settings, backends.object_store, membership, backends.quotas)
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store",),
        route_handlers=route_handlers(service),
        workers=membership.workers(backends),
        description="issues presigned upload URLs for image messages.",
    )


def create_app(settings: Settings, backends: Backends | None = None) -> Litestar:
    backends = backends or Backends(settings)
    return create_service_app(
        settings, backends, [build(settings, backends)], component=COMPONENT, title="chat-management upload"
    )
