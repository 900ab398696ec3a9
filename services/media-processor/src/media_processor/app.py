"""Media processor service: turns raw uploads into the sanitized images members are served.

No public API: the worker runs in the lifespan of a small app that serves ``/healthz``, ``/readyz`` (the
media queue, the message store, the object store and the event bus answer, and the image worker pool is
not short of workers it cannot start: ``media_pool``) and ``/metrics``. In the all-in-one process the
worker runs beside the other services; there the local object store announces each upload on the embedded
media queue, as the bucket's object-created notification does in the cloud.
"""

from __future__ import annotations

from litestar import Litestar

from chat_core.app_factory import ServiceParts, create_service_app
from chat_core.capabilities import AnnouncesUploads
from chat_core.composition import Composition
from chat_core.settings import Settings
from media_processor.ports import MediaPorts
from media_processor.worker import MediaWorker

COMPONENT = "media-processor"


def ports(root: Composition) -> MediaPorts:
    """This service's ports, picked from the process's composition root."""
    return MediaPorts(
        media_queue=root.media_queue,
        messages=root.messages,
        conversations=root.conversations,
        outbox=root.outbox,
        object_store=root.object_store,
        event_bus=root.event_bus,
        storage_ledger=root.storage_ledger,
    )


def build(settings: Settings, ports: MediaPorts) -> ServiceParts:
    """This service's routes, dependencies and workers, wired to ``ports``."""
    worker = MediaWorker.from_ports(settings, ports)
    if isinstance(ports.object_store, AnnouncesUploads):
        worker.listen_to_uploads(ports.object_store)
    return ServiceParts(
        component=COMPONENT,
        # A job's `message.updated` leaves through the event outbox (committed with the image's new state,
        # relayed when the bus is back), so a Redis outage delays events and fails no job: the bus is not
        # essential here ("degraded", as in every other service; the chart's readiness tests fail on
        # "degraded", so a processor deployed without Redis credentials is still caught).
        essential=("media_queue", "message_store", "object_store"),
        workers=[worker.worker],
        readiness={"media_pool": worker.pool_ready},
        description="sanitizes uploaded images into an original, a preview and a thumbnail.",
    )


def create_app(settings: Settings, root: Composition | None = None) -> Litestar:
    root = root or Composition(settings)
    return create_service_app(
        settings,
        root,
        [build(settings, ports(root))],
        component=COMPONENT,
        title="chat-management media-processor",
    )
