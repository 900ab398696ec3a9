"""What every adapter is, and what only some adapters can do: small protocols the composition root checks.

Every adapter has a lifecycle (``Lifecycle``: start, close). What only some can do is a protocol of its
own, checked with ``isinstance`` by the composition root (``chat_core.composition``): ``ReadinessProbe``
(``/readyz`` asks it), ``ServesRoutes`` (the local object store's signed URLs), ``UsesAws`` (credentials
are resolved before it starts), ``AnnouncesUploads`` (the local object store tells the media processor of
an upload, as S3's notification does). A module of the domain: it imports no adapter and no client library.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler

    from chat_core.objectstore import ObjectInfo

__all__ = [
    "PORTS",
    "AnnouncesUploads",
    "Lifecycle",
    "ReadinessCheck",
    "ReadinessProbe",
    "ServesRoutes",
    "UsesAws",
]

ReadinessCheck = Callable[[], Awaitable[None]]

# The ports a service may name as essential for its readiness (``ServiceParts.essential``).
PORTS = frozenset(
    {
        "object_store",
        "message_store",
        "event_bus",
        "presence",
        "notification_queue",
        "media_queue",
        "push_provider",
    }
)


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReadinessProbe(Protocol):
    """An adapter ``/readyz`` can ask; ``readiness_name`` is what an operator looks for (``redis``)."""

    readiness_name: str

    async def ping(self) -> None: ...


@runtime_checkable
class ServesRoutes(Protocol):
    """An embedded adapter that serves HTTP itself (the local object store's signed URLs)."""

    def route_handlers(self) -> list[HTTPRouteHandler]: ...


@runtime_checkable
class UsesAws(Protocol):
    """An adapter that signs AWS requests: the composition root resolves credentials before starting it."""

    uses_aws: Literal[True]


@runtime_checkable
class AnnouncesUploads(Protocol):
    """An object store that receives uploads itself (the local one) and can say when one lands, as S3's
    object-created notification does for the bucket."""

    def announce_uploads(self, listener: Callable[[ObjectInfo], Awaitable[None]]) -> None: ...
