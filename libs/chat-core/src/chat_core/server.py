"""Run a service app under uvicorn (uvloop + httptools), with settings checked before anything starts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from litestar import Litestar

from chat_core.logging import configure_logging
from chat_core.settings import Settings, SettingsError, is_loopback, load_settings, refuse_dev_secret
from chat_core.websocket_server import LeanWebSocketProtocol

__all__ = ["load_or_exit", "refuse_unset_endpoints", "serve", "uvicorn_options"]


def load_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings, or exit 2 with one line naming the bad variable."""
    try:
        return load_settings(environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def refuse_unset_endpoints(settings: Settings, bind_host: str, environ: Mapping[str, str]) -> None:
    """Off loopback, a backend in use must be told where it is: the defaults are a laptop's.

    ``redis://127.0.0.1`` and the emulator's project ``chat-management-dev`` would otherwise be used
    silently, and the service would never get Ready, with nothing in its log saying why. Set explicitly,
    even to a local address (one machine serving the network with its own Redis), they are taken as meant.
    """
    if is_loopback(bind_host):
        return
    kinds = settings.backends
    missing = []
    redis_users = [
        f"{name}=redis"
        for name, kind in (("EVENT_BUS", kinds.event_bus), ("LIMIT_STORE", kinds.limit_store))
        if kind == "redis"
    ]
    if redis_users and "REDIS_URL" not in environ:
        missing.append(f"REDIS_URL (with {' and '.join(redis_users)})")
    if kinds.message_store == "firestore" and "FIRESTORE_PROJECT_ID" not in environ:
        missing.append("FIRESTORE_PROJECT_ID (with MESSAGE_STORE=firestore)")
    if missing:
        raise SettingsError(
            f"{', '.join(missing)}: required when binding {bind_host} (not loopback); the defaults are a "
            "development machine's"
        )


def serve(
    factory: Callable[[Settings], Litestar],
    *,
    component: str,
    host: str | None = None,
    port: int | None = None,
    settings: Settings | None = None,
) -> None:
    settings = settings or load_or_exit()
    bind_host = host or settings.service.host
    try:
        refuse_dev_secret(settings, bind_host)
        refuse_unset_endpoints(settings, bind_host, os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.service.log_level, service=component)
    app = factory(settings)
    uvicorn.run(
        app, host=bind_host, port=settings.service.port if port is None else port, **uvicorn_options(settings)
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How every service runs under uvicorn (``serve``; the socket benchmarks reuse it in-process)."""
    return {
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
        # uvicorn's websockets-sansio protocol cut down for idle sockets, writing ready frames as they are
        # (chat_core.websocket_server: ~14 KiB less per socket, no task or await per delivered event).
        "ws": LeanWebSocketProtocol,
        "ws_max_size": settings.limits.socket_max_frame_bytes,  # bigger frames: close 1009 by the server
        # No permessage-deflate: its zlib state (a compressor and a decompressor, ~40 KiB at uvicorn's
        # window of 2^12) would live as long as each socket, for JSON events of a few hundred bytes that
        # compress to little. Browsers offer it; the server declines and frames go uncompressed.
        "ws_per_message_deflate": False,
        # Keepalive pings hold idle sockets open through the load balancer; each costs CPU per socket.
        "ws_ping_interval": settings.service.ws_ping_interval_seconds,
        # The same trusted proxies as the per-IP limits: the access log and the limits see one client.
        "forwarded_allow_ips": list(settings.limits.trusted_proxies),
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": int(settings.service.drain_seconds),
        "timeout_keep_alive": int(settings.service.keep_alive_seconds),
    }
