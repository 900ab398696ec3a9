"""The narrow ports the image proxy uses, picked from the composition root by ``app.ports(root)``."""

from __future__ import annotations

from dataclasses import dataclass

from chat_core.auth import TokenVerifier
from chat_core.chatstore import MessageStore
from chat_core.membership import MembershipCache
from chat_core.objectstore import ObjectStore
from chat_core.realtime import EventBus

__all__ = ["ProxyPorts"]


@dataclass(frozen=True, kw_only=True)
class ProxyPorts:
    object_store: ObjectStore
    messages: MessageStore  # an image's state (processing, ready, failed, deleted)
    membership: MembershipCache  # the process's cache over the conversations
    event_bus: EventBus  # the membership cache's invalidations, deletions
    verifier: TokenVerifier  # the bearer token or its cookie
