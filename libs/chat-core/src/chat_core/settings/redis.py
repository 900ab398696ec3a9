"""Redis (the bus, presence, limits) and how long presence lasts."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import msgspec

from chat_core.settings.base import Frozen, env


class RedisSettings(Frozen, frozen=True, kw_only=True):
    url: Annotated[str, env("REDIS_URL", "Redis for pub/sub and presence (EVENT_BUS=redis).")] = (
        "redis://127.0.0.1:6379/0"
    )
    mode: Annotated[
        Literal["standalone", "cluster"],
        env(
            "REDIS_MODE",
            "`standalone` (one node: PUBLISH/SUBSCRIBE) or `cluster` (Redis Cluster, e.g. ElastiCache or "
            "Memorystore cluster mode: sharded pub/sub, REDIS_URL is any node). `rediss://` turns TLS on; "
            "credentials in the URL or in REDIS_USERNAME / REDIS_PASSWORD.",
        ),
    ] = "standalone"
    username: Annotated[
        str, env("REDIS_USERNAME", "Redis ACL user (ElastiCache RBAC); overrides the URL's. From a Secret.")
    ] = ""
    password: Annotated[
        str,
        env(
            "REDIS_PASSWORD",
            "Redis password / AUTH token (any characters); overrides the URL's. From a Secret.",
        ),
    ] = ""

    tls_ca_cert: Annotated[
        str,
        env(
            "REDIS_TLS_CA_CERT",
            "PEM of the CA that signed Redis's TLS certificate (`rediss://`), when the system's trust store "
            "does not hold it (Memorystore's per-instance CA). Empty: the system's trust store.",
        ),
    ] = ""

    def address(self) -> str:
        """``url`` with ``username``/``password`` (percent-encoded) in it, when they are set."""
        if not (self.username or self.password):
            return self.url
        split = urlsplit(self.url)
        host = split.netloc.rpartition("@")[2]
        user = quote(self.username or unquote(split.username or ""), safe="")
        secret = quote(self.password or unquote(split.password or ""), safe="")
        return urlunsplit(split._replace(netloc=f"{user}:{secret}@{host}"))


class PresenceSettings(Frozen, frozen=True, kw_only=True):
    ttl_seconds: Annotated[
        int,
        env("PRESENCE_TTL_SECONDS", "A socket counts as online this long after its last heartbeat."),
        msgspec.Meta(ge=2, le=3600),
    ] = 60
