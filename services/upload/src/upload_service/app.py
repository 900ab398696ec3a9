"""Upload service: issues presigned upload URLs for image messages."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from chat_core import keys
from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.composition import Composition
from chat_core.openapi import DocumentRefinement, add_link, constrain
from chat_core.settings import Settings
from upload_service.ports import UploadPorts
from upload_service.routes import hot_upload_url, route_handlers
from upload_service.service import UploadService

COMPONENT = "upload"
UPLOAD = "/conversations/{conversation_id}/images/upload_url"
SEND = "/conversations/{conversation_id}/messages"


def document_refinement(settings: Settings) -> DocumentRefinement:
    """The document's shapes that follow settings (accepted types, size limit), and the link from an
    upload URL to the image message naming it (when the message service is in the same document)."""
    allowed = frozenset(settings.images.allowed_types) & keys.EXTENSIONS.keys()

    def refine(document: dict[str, Any]) -> None:
        constrain(document, "UploadUrlRequest", "content_type", pattern=keys.content_type_pattern(allowed))
        constrain(document, "UploadUrlRequest", "size_bytes", maximum=settings.images.max_bytes)
        add_link(
            document,
            (UPLOAD, "post", "200"),
            (SEND, "post"),
            parameters={"conversation_id": "$request.path.conversation_id"},
            request_body={
                "messageType": "image",
                "metadata": {
                    "object_key": "$response.body#/object_key",
                    "content_type": "$request.body#/content_type",
                },
            },
        )

    return refine


def ports(root: Composition) -> UploadPorts:
    """This service's ports, picked from the process's composition root."""
    return UploadPorts(
        object_store=root.object_store,
        membership=root.membership,
        quotas=root.quotas,
        event_bus=root.event_bus,
    )


def build(settings: Settings, ports: UploadPorts) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``ports``."""
    service = UploadService(
        settings.images, settings.service.base_url(), ports.object_store, ports.membership, ports.quotas
    )
    handlers = route_handlers(service)
    return ServiceParts(
        component=COMPONENT,
        essential=("message_store",),
        route_handlers=handlers,
        hot_routes=[hot_upload_url(service, handlers[0])],
        workers=ports.membership.workers(ports.event_bus),
        description="issues presigned upload URLs for image messages.",
        document=[document_refinement(settings)],
    )


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    root = root or Composition(settings)
    return create_service_app(
        settings, root, [build(settings, ports(root))], component=COMPONENT, title="chat-management upload"
    )
