"""Run a service app under uvicorn (uvloop + httptools), with settings checked before anything starts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn
from litestar import Litestar

from chat_core.logging import configure_logging
from chat_core.settings import Settings, SettingsError, load_settings, refuse_dev_secret

__all__ = ["load_or_exit", "serve", "uvicorn_options"]


def load_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings, or exit 2 with one line naming the bad variable."""
    try:
        return load_settings(environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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
        "ws": "websockets-sansio",
        "ws_max_size": settings.limits.socket_max_frame_bytes,  # bigger frames: close 1009 by the server
        # No permessage-deflate: its zlib state (a compressor and a decompressor, ~40 KiB at uvicorn's
        # window of 2^12) would live as long as each socket, for JSON events of a few hundred bytes that
        # compress to little. Browsers offer it; the server declines and frames go uncompressed.
        "ws_per_message_deflate": False,
        # The same trusted proxies as the per-IP limits: the access log and the limits see one client.
        "forwarded_allow_ips": list(settings.limits.trusted_proxies),
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "proxy_headers": True,
        "server_header": False,
        "timeout_graceful_shutdown": int(settings.service.drain_seconds),
    }
