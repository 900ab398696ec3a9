"""The HTTP server: where it listens, its public URL, CORS, logging, deadlines."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from chat_core.settings.base import Frozen, env


class ServiceSettings(Frozen, frozen=True, kw_only=True):
    host: Annotated[str, env("HOST", "Interface the HTTP server listens on.")] = "0.0.0.0"
    port: Annotated[int, env("PORT", "Port the HTTP server listens on."), msgspec.Meta(ge=0, le=65535)] = 8000
    public_base_url: Annotated[
        str,
        env(
            "PUBLIC_BASE_URL",
            "Base URL clients reach the API on; `file_url` and image `url` are built from it. "
            "Default: `http://127.0.0.1:{PORT}`.",
        ),
    ] = ""
    cors_allow_origins: Annotated[
        tuple[str, ...],
        env(
            "CORS_ALLOW_ORIGINS",
            "Comma-separated origins allowed by CORS (`*` for any); empty turns CORS off.",
        ),
    ] = ("*",)
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], env("LOG_LEVEL", "Minimum log level.")
    ] = "INFO"
    access_log: Annotated[bool, env("ACCESS_LOG", "Write one structured log line per request.")] = True
    data_dir: Annotated[
        str, env("DATA_DIR", "Where the embedded adapters keep their files (objects, SQLite databases).")
    ] = ".data"
    request_timeout_seconds: Annotated[
        float,
        env(
            "REQUEST_TIMEOUT_SECONDS",
            "Deadline of a request until its answer starts (then 503 `backend_timeout`); 0: none.",
        ),
        msgspec.Meta(ge=0),
    ] = 15.0
    drain_seconds: Annotated[
        float,
        env("SHUTDOWN_DRAIN_SECONDS", "Grace given to in-flight requests and jobs on SIGTERM."),
        msgspec.Meta(ge=0),
    ] = 10.0
    keep_alive_seconds: Annotated[
        float,
        env(
            "HTTP_KEEP_ALIVE_SECONDS",
            "How long an idle HTTP/1.1 connection is kept open. Keep it above the load balancer's idle "
            "timeout (ALB: 60 s, GKE/Envoy: 60 s), so the balancer, not the server, closes idle connections "
            "and never sends a request on one the server has just closed (a 502).",
        ),
        msgspec.Meta(gt=0),
    ] = 75.0
    ws_ping_interval_seconds: Annotated[
        float,
        env(
            "WS_PING_INTERVAL_SECONDS",
            "Seconds between the server's keepalive pings on each open WebSocket (one that does not answer "
            "within 20 s is closed). Keep it below the load balancer's idle timeout (ALB: 60 s) so idle "
            "sockets stay open through it; each ping round trip costs ~170 µs of CPU per socket, so a longer "
            "interval cuts that cost in proportion.",
        ),
        msgspec.Meta(gt=0),
    ] = 20.0

    def base_url(self) -> str:
        return (self.public_base_url or f"http://127.0.0.1:{self.port}").rstrip("/")
